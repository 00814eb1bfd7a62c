/**
 * The one error type for native and device failures. Argument errors use the standard
 * TypeError / RangeError / SyntaxError; a MixprecError means the native library or a device
 * refused, and `code` says why.
 *
 * @example
 * ```ts
 * import { MixprecError } from "./errors.ts";
 * const error = new MixprecError("library_missing", "Run make build");
 * if (error.code !== "library_missing") throw new Error("unexpected code");
 * ```
 */
export class MixprecError extends Error {
  /** A stable, machine-readable reason, e.g. "library_missing" or "cuda_unavailable". */
  readonly code: string;

  /**
   * @param code A stable reason code.
   * @param message A sentence that names the problem and the fix.
   */
  constructor(code: string, message: string) {
    super(message);
    this.name = "MixprecError";
    this.code = code;
  }
}
