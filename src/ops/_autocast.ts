/**
 * The one place ops ask which dtype to compute in: autocast's op table (src/autocast.ts). Ops use
 * these names: "matmul", "linear", "bmm" (batched products), "scaled_dot_product_attention"
 * (attention and causalSelfAttention), "add", "sub", "mul", "div", "relu",
 * "gelu", "silu", "tanh", "exp", "log", "sum", "mean", "softmax", "log_softmax", "cross_entropy",
 * "layer_norm", "rms_norm" (names not in the table promote to the widest input dtype).
 *
 * @module
 */

export { autocastDtype } from "../autocast.ts";
