/**
 * A naive float64 attention (forward and its analytic gradient) for the attention tests: the
 * definition, softmax(q k^T * scale + mask) v, one row at a time, with no tiling.
 *
 * @module
 */

export interface AttentionCase {
  readonly batch: number;
  readonly stepsQ: number;
  readonly stepsKv: number;
  readonly headsQ: number;
  readonly headsKv: number;
  readonly headDim: number;
  readonly causal: boolean;
  /** [B, S]: 0 pads a key. */
  readonly mask: Float64Array | null;
  readonly scale: number;
}

export interface AttentionReference {
  readonly out: Float64Array;
  readonly dq: Float64Array;
  readonly dk: Float64Array;
  readonly dv: Float64Array;
}

/** out = attention(q, k, v) and, for the loss sum(out * dOut), the gradients of q, k and v. */
export function attention64(
  c: AttentionCase,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dOut: ArrayLike<number> | null = null,
): AttentionReference {
  const { batch, stepsQ: T, stepsKv: S, headsQ, headsKv, headDim: D } = c;
  const group = headsQ / headsKv;
  const out = new Float64Array(batch * T * headsQ * D);
  const dq = new Float64Array(out.length);
  const dk = new Float64Array(batch * S * headsKv * D);
  const dv = new Float64Array(dk.length);
  const qi = (b: number, i: number, h: number) => ((b * T + i) * headsQ + h) * D;
  const ki = (b: number, j: number, h: number) => ((b * S + j) * headsKv + h) * D;
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < headsQ; h++) {
      const hk = Math.floor(h / group);
      for (let i = 0; i < T; i++) {
        const visible: number[] = [];
        for (let j = 0; j < S; j++) {
          if (c.causal && j > i + S - T) continue;
          if (c.mask !== null && c.mask[b * S + j] === 0) continue;
          visible.push(j);
        }
        if (visible.length === 0) continue; // Output and gradients 0.
        const scores = visible.map((j) => {
          let s = 0;
          for (let d = 0; d < D; d++) s += q[qi(b, i, h) + d]! * k[ki(b, j, hk) + d]!;
          return s * c.scale;
        });
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const total = e.reduce((a, x) => a + x, 0);
        const p = e.map((x) => x / total);
        visible.forEach((j, n) => {
          for (let d = 0; d < D; d++) out[qi(b, i, h) + d]! += p[n]! * v[ki(b, j, hk) + d]!;
        });
        if (dOut === null) continue;
        const dp = visible.map((j) => {
          let s = 0;
          for (let d = 0; d < D; d++) s += dOut[qi(b, i, h) + d]! * v[ki(b, j, hk) + d]!;
          return s;
        });
        let delta = 0;
        for (let n = 0; n < visible.length; n++) delta += p[n]! * dp[n]!;
        visible.forEach((j, n) => {
          const ds = p[n]! * (dp[n]! - delta) * c.scale;
          for (let d = 0; d < D; d++) {
            dq[qi(b, i, h) + d]! += ds * k[ki(b, j, hk) + d]!;
            dk[ki(b, j, hk) + d]! += ds * q[qi(b, i, h) + d]!;
            dv[ki(b, j, hk) + d]! += p[n]! * dOut[qi(b, i, h) + d]!;
          }
        });
      }
    }
  }
  return { out, dq, dk, dv };
}
