// bun:ffi's toArrayBuffer also takes a deallocator: Bun calls the C function `deallocator(context)`
// when the buffer is collected (src/backend/cpu/storage.ts frees host blocks this way). bun-types
// 1.4.5 declares only the first three arguments; this adds the five-argument form.
import "bun:ffi";

declare module "bun:ffi" {
  function toArrayBuffer(
    ptr: Pointer | number,
    byteOffset: number,
    byteLength: number,
    deallocatorContext: number,
    deallocator: number,
  ): ArrayBuffer;
}
