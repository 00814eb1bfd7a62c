/**
 * The device side of a training step whose loss scale lives on the GPU (GradScaler and fusedAdamW
 * on cuda tensors): one 16-byte device allocation holds the float32 scale, the int32 growth
 * tracker and the u32 found-inf flag (zig/src/cuda/step_math.zig `ScaleState`, then the flag), and
 * every kernel reads them where they are. Row tables and constant blocks are device allocations
 * owned by their user and re-uploaded only when their contents change (a parameter set keeps its
 * addresses, so a training loop uploads them once), so a step queues kernels and never waits.
 *
 * Only reading a value for the host waits (`read`, the lazy step results), and cudaSyncCount
 * counts it.
 *
 * @module
 */

import { native } from "../_ffi.ts";
import { dtypeInfo } from "../dtype.ts";
import type { Tensor } from "../tensor.ts";
import { type AdamHyper, type AdamRowTensors, adamHyper, adamRows, rowOf, tensorRows } from "./_tables.ts";
import {
  checkCuda,
  cudaAlloc,
  cudaCopyOnDevice,
  cudaCopyToDevice,
  cudaCopyToHost,
  cudaFill32,
  cudaFree,
  cudaFusedAdamW,
  cudaUnscaleCheck,
  cudaUpdateScale,
} from "./cuda.ts";

/** The device addresses a fused optimizer needs to unscale and skip on the device. */
export interface DeviceAmp {
  readonly ordinal: number;
  /** float32 loss scale, or 0 when the gradients are already unscaled. */
  readonly scaleAddress: number;
  /** u32 found-inf flag. */
  readonly foundInfAddress: number;
}

/** The scaler's state as read back: scale, growth tracker, found-inf. */
export interface ScaleSnapshot {
  readonly scale: number;
  readonly tracker: number;
  readonly foundInf: boolean;
}

const STATE_BYTES = 16;
const SNAPSHOT_BYTES = 12;

/** Blocks of snapshots nobody read, freed when their reader is collected. */
const snapshots = new FinalizationRegistry<{ ordinal: number; address: number; live: boolean }>((held) => {
  if (held.live) cudaFree(held.ordinal, held.address);
});

function decode(words: Uint32Array): ScaleSnapshot {
  return {
    scale: new Float32Array(words.buffer, 0, 1)[0]!,
    tracker: new Int32Array(words.buffer, 4, 1)[0]!,
    foundInf: words[2] !== 0,
  };
}

/** A GradScaler's device state: { scale: f32, tracker: i32, foundInf: u32, reserved }. */
export class DeviceScaleState {
  readonly ordinal: number;
  readonly address: number;
  #live = true;

  constructor(ordinal: number, scale: number, tracker: number) {
    this.ordinal = ordinal;
    this.address = cudaAlloc(ordinal, STATE_BYTES);
    this.write(scale, tracker);
    cudaFill32(ordinal, this.foundInfAddress, 0, 2);
  }

  get scaleAddress(): number {
    return this.address;
  }

  get foundInfAddress(): number {
    return this.address + 8;
  }

  /** Queues a write of scale and tracker (no wait). */
  write(scale: number, tracker: number): void {
    const bytes = new ArrayBuffer(8);
    new Float32Array(bytes, 0, 1)[0] = scale;
    new Int32Array(bytes, 4, 1)[0] = tracker;
    cudaCopyToDevice(this.ordinal, this.address, new Uint8Array(bytes));
  }

  /** Queues a write of the scale alone (no wait). */
  writeScale(scale: number): void {
    cudaCopyToDevice(this.ordinal, this.address, new Float32Array([scale]));
  }

  /** Zeroes the found-inf flag (no wait). */
  clearFoundInf(): void {
    cudaFill32(this.ordinal, this.foundInfAddress, 0, 1);
  }

  /** Reads scale, tracker and flag now (waits for the device: one counted synchronisation). */
  read(): ScaleSnapshot {
    const words = new Uint32Array(3);
    cudaCopyToHost(this.ordinal, words, this.address);
    return decode(words);
  }

  /**
   * Copies the state as it will be at this point of the stream into a block of its own (no wait)
   * and returns a reader that waits for it once, on first call.
   */
  snapshot(): () => ScaleSnapshot {
    const held = { ordinal: this.ordinal, address: cudaAlloc(this.ordinal, SNAPSHOT_BYTES), live: true };
    cudaCopyOnDevice(this.ordinal, held.address, this.address, SNAPSHOT_BYTES);
    let value: ScaleSnapshot | undefined;
    const reader = () => {
      if (value !== undefined) return value;
      const words = new Uint32Array(3);
      cudaCopyToHost(held.ordinal, words, held.address);
      held.live = false;
      cudaFree(held.ordinal, held.address);
      value = decode(words);
      return value;
    };
    snapshots.register(reader, held);
    return reader;
  }

  /** PyTorch's _amp_update_scale_ on the device (no wait). */
  update(growthFactor: number, backoffFactor: number, growthInterval: number): void {
    cudaUpdateScale(this.ordinal, this.address, this.foundInfAddress, { growthFactor, backoffFactor, growthInterval });
  }

  dispose(): void {
    if (!this.#live) return;
    this.#live = false;
    cudaFree(this.ordinal, this.address);
  }
}

/**
 * A device buffer whose contents are uploaded only when they change (a row table of the same
 * tensors, a constant block of the same values): no allocation, no copy in a steady loop.
 */
export class CachedDeviceBuffer {
  readonly ordinal: number;
  #address = 0;
  #capacity = 0;
  #last: Uint8Array | null = null;

  constructor(ordinal: number) {
    this.ordinal = ordinal;
  }

  /** The buffer holding `contents`, uploaded (no wait) only when they differ from the last. */
  set(contents: ArrayBufferView): number {
    const bytes = new Uint8Array(contents.buffer, contents.byteOffset, contents.byteLength);
    const last = this.#last;
    if (last !== null && last.length === bytes.length && last.every((b, i) => b === bytes[i])) return this.#address;
    if (bytes.length > this.#capacity) {
      // Freed blocks are reused only by later work on the stream, after the kernels that read them.
      if (this.#address !== 0) cudaFree(this.ordinal, this.#address);
      this.#address = cudaAlloc(this.ordinal, bytes.length);
      this.#capacity = bytes.length;
    }
    cudaCopyToDevice(this.ordinal, this.#address, bytes);
    this.#last = bytes.slice();
    return this.#address;
  }

  get address(): number {
    return this.#address;
  }

  dispose(): void {
    if (this.#address !== 0) cudaFree(this.ordinal, this.#address);
    this.#address = 0;
    this.#capacity = 0;
    this.#last = null;
  }
}

/** target = round(source * scale) with the device scale (no wait); same dtype, same size. */
export function scaleByDeviceScale(source: Tensor, target: Tensor, scaleAddress: number): void {
  checkCuda(
    native().mp_cuda_launch_amp_scale_tensor(
      Number(source.device.slice(5)),
      source.size === 0 ? 0 : source.address,
      target.size === 0 ? 0 : target.address,
      source.size,
      dtypeInfo(source.dtype).code,
      scaleAddress,
    ),
    `Scaling ${source} by the device loss scale`,
  );
}

/**
 * Sets the found-inf flag when any gradient holds inf or NaN, and unscales them in place by the
 * device scale when `unscale` (else only checks: nothing is written). No wait.
 */
export function checkGradients(
  table: CachedDeviceBuffer,
  grads: readonly Tensor[],
  state: DeviceScaleState,
  unscale: boolean,
): void {
  const rows = grads.map(rowOf);
  let totalCount = 0;
  for (const row of rows) totalCount += row.count;
  if (totalCount === 0) return;
  const address = table.set(tensorRows(rows));
  const handle = {
    ordinal: state.ordinal,
    address,
    rowCount: rows.length,
    totalCount,
    dispose() {},
    [Symbol.dispose]() {},
  };
  cudaUnscaleCheck(handle, unscale ? { scaleAddress: state.scaleAddress } : { invScale: 1 }, state.foundInfAddress);
}

/** Entries of the hyper table uploaded beyond the steps reachable so far (uploads per 64 steps). */
const HYPER_CHUNK = 64;
const PARTIALS_MAX = 1024;

/**
 * A fused AdamW's device record for one parameter set: the applied-step count, the table of every
 * reachable step's constants, the constants of the step being run, the row tables and the
 * clipping partials. Steps are queued without waiting; the count is read only when asked for.
 */
export class DeviceAdamRecord {
  readonly ordinal: number;
  readonly #counter: number;
  readonly #current: number;
  #partials = 0;
  readonly #hyperTable: CachedDeviceBuffer;
  readonly #rows: CachedDeviceBuffer;
  readonly #grads: CachedDeviceBuffer;
  /** Entries in the hyper table (steps 1..capacity). */
  #capacity = 0;
  /** Steps queued since the count was last written: the count is at most start + issued. */
  #start = 0;
  #issued = 0;

  constructor(ordinal: number, count: number) {
    this.ordinal = ordinal;
    this.#counter = cudaAlloc(ordinal, 4);
    this.#current = cudaAlloc(ordinal, 48);
    this.#hyperTable = new CachedDeviceBuffer(ordinal);
    this.#rows = new CachedDeviceBuffer(ordinal);
    this.#grads = new CachedDeviceBuffer(ordinal);
    this.setCount(count);
  }

  /** Queues a write of the applied-step count (after loadStateDict). */
  setCount(count: number): void {
    cudaFill32(this.ordinal, this.#counter, count >>> 0, 1);
    this.#start = count;
    this.#issued = 0;
    this.#capacity = 0;
  }

  /** The applied-step count (waits for the device). */
  count(): number {
    const word = new Uint32Array(1);
    cudaCopyToHost(this.ordinal, word, this.#counter);
    return word[0]!;
  }

  /**
   * Queues one step: the clipping sum (when `maxNorm` is not null), the preparation kernel and the
   * fused kernel, which skips itself when the found-inf flag is set.
   *
   * @param rows The step's tensors (seeds are rewritten on the device when stochastic).
   * @param hyperOf The constants of step number t (1-based), inverse scale and clip left at 1.
   */
  step(
    rows: readonly AdamRowTensors[],
    hyperOf: (t: number) => AdamHyper,
    amp: DeviceAmp,
    options: { readonly maxNorm: number | null; readonly seed: number; readonly stochastic: boolean },
  ): void {
    let totalCount = 0;
    for (const row of rows) totalCount += row.param.size;
    if (totalCount === 0) return;
    const reachable = this.#start + this.#issued + 1;
    if (reachable > this.#capacity) {
      const capacity = reachable + HYPER_CHUNK;
      const table = new Float32Array(capacity * 12);
      for (let t = 1; t <= capacity; t++) table.set(adamHyper(hyperOf(t)), (t - 1) * 12);
      this.#hyperTable.set(table);
      this.#capacity = capacity;
    }
    const rowsAddress = this.#rows.set(adamRows(rows.map((row) => ({ ...row, seed: 0 }))));
    let sumTotal = 0;
    if (options.maxNorm !== null) {
      this.#partials ||= cudaAlloc(this.ordinal, PARTIALS_MAX * 8);
      const gradRows = rows.map((row) => rowOf(row.grad));
      const gradTable = this.#grads.set(tensorRows(gradRows));
      checkCuda(
        native().mp_cuda_launch_amp_sum_squares(
          this.ordinal,
          gradTable,
          gradRows.length,
          totalCount,
          amp.scaleAddress,
          this.#partials,
          amp.foundInfAddress,
        ),
        `Summing gradient squares on cuda:${this.ordinal}`,
      );
      sumTotal = totalCount;
    }
    checkCuda(
      native().mp_cuda_launch_amp_adam_prepare(
        this.ordinal,
        this.#hyperTable.address,
        this.#capacity,
        this.#current,
        this.#counter,
        amp.scaleAddress,
        amp.foundInfAddress,
        this.#partials,
        sumTotal,
        Math.fround(options.maxNorm ?? 1),
        rowsAddress,
        rows.length,
        options.seed >>> 0,
        options.stochastic ? 1 : 0,
      ),
      `Preparing a fused AdamW step on cuda:${this.ordinal}`,
    );
    cudaFusedAdamW(this.ordinal, rowsAddress, rows.length, totalCount, this.#current, amp.foundInfAddress);
    this.#issued++;
  }

  dispose(): void {
    cudaFree(this.ordinal, this.#counter);
    cudaFree(this.ordinal, this.#current);
    if (this.#partials !== 0) cudaFree(this.ordinal, this.#partials);
    this.#partials = 0;
    this.#hyperTable.dispose();
    this.#rows.dispose();
    this.#grads.dispose();
  }
}

/** Copies a device u32 into a block of its own (no wait); the reader waits for it once. */
export function snapshotWord(ordinal: number, address: number): () => number {
  const held = { ordinal, address: cudaAlloc(ordinal, 4), live: true };
  cudaCopyOnDevice(ordinal, held.address, address, 4);
  let value: number | undefined;
  const reader = () => {
    if (value !== undefined) return value;
    const word = new Uint32Array(1);
    cudaCopyToHost(held.ordinal, word, held.address);
    held.live = false;
    cudaFree(held.ordinal, held.address);
    value = word[0]!;
    return value;
  };
  snapshots.register(reader, held);
  return reader;
}
