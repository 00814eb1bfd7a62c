import { describe, expect, test } from "bun:test";
import {
  AUTOCAST_OPS,
  AUTOCAST_OPS_BY_DEVICE,
  AUTOCAST_OPS_CPU,
  autocast,
  autocastCategory,
  autocastDtype,
  autocastTensors,
  currentDeviceType,
  currentPolicy,
  type DtypeName,
  getPolicy,
  promoteDtypes,
  tensor,
} from "../src/mod.ts";
import cpuProbe from "./fixtures/autocast_cpu.json";

const F32 = "float32";
const F16 = "float16";
const BF16 = "bfloat16";

/** [op, input dtypes, outside autocast, under mixed_bf16, under mixed_f16, under fp32] */
const DISPATCH: readonly [string, DtypeName[], DtypeName, DtypeName, DtypeName, DtypeName][] = [
  ["matmul", [F32, F32], F32, BF16, F16, F32],
  ["linear", [F32, F32, F32], F32, BF16, F16, F32],
  ["bmm", [BF16, BF16], BF16, BF16, F16, BF16],
  ["conv", [F32, F16], F32, BF16, F16, F32],
  ["softmax", [BF16], BF16, F32, F32, BF16],
  ["log_softmax", [F16], F16, F32, F32, F16],
  ["cross_entropy", [BF16], BF16, F32, F32, BF16],
  ["layer_norm", [BF16, F32], F32, F32, F32, F32],
  ["rms_norm", [F16], F16, F32, F32, F16],
  ["exp", [BF16], BF16, F32, F32, BF16],
  ["log", [F16], F16, F32, F32, F16],
  ["pow", [BF16], BF16, F32, F32, BF16],
  ["sum", [BF16], BF16, F32, F32, BF16],
  ["mean", [F16], F16, F32, F32, F16],
  ["add", [BF16, F32], F32, F32, F32, F32],
  ["sub", [BF16, BF16], BF16, BF16, BF16, BF16],
  ["mul", [F16, BF16], F32, F32, F32, F32],
  ["div", [F16, F16], F16, F16, F16, F16],
  ["relu", [BF16], BF16, BF16, BF16, BF16],
  ["gelu", [F16, F32], F32, F32, F32, F32],
];

describe("autocastDtype()", () => {
  for (const [op, inputs, outside, bf16, f16, fp32] of DISPATCH) {
    test(`${op}(${inputs.join(", ")}) computes in ${outside} outside, ${bf16} under mixed_bf16, ${f16} under mixed_f16, ${fp32} under fp32`, () => {
      expect(autocastDtype(op, inputs)).toBe(outside);
      expect(autocast(getPolicy("mixed_bf16"), () => autocastDtype(op, inputs))()).toBe(bf16);
      expect(autocast(getPolicy("mixed_f16"), () => autocastDtype(op, inputs))()).toBe(f16);
      expect(autocast(getPolicy("fp32"), () => autocastDtype(op, inputs))()).toBe(fp32);
    });
  }

  test("every op the contract names is in the table with PyTorch's category", () => {
    const lower = ["matmul", "linear", "bmm", "conv"];
    const float32 = [
      "softmax",
      "log_softmax",
      "cross_entropy",
      "layer_norm",
      "rms_norm",
      "exp",
      "log",
      "pow",
      "sum",
      "mean",
    ];
    const promote = ["add", "sub", "mul", "div"];
    for (const op of lower) expect(AUTOCAST_OPS[op]).toBe("lower");
    for (const op of float32) expect(AUTOCAST_OPS[op]).toBe("float32");
    for (const op of promote) expect(AUTOCAST_OPS[op]).toBe("promote");
    expect(autocastCategory("some_new_op")).toBe("promote");
    expect(autocastCategory("constructor")).toBe("promote");
    expect(Object.isFrozen(AUTOCAST_OPS)).toBe(true);
  });

  test("promotion picks the narrowest dtype that holds every input", () => {
    expect(promoteDtypes([])).toBe(F32);
    expect(promoteDtypes(["bf16", "f16"])).toBe(F32);
    expect(promoteDtypes(["e4m3", "bf16"])).toBe(BF16);
    expect(promoteDtypes(["e4m3", "e5m2"])).toBe(F16);
    expect(promoteDtypes(["e5m2", "e5m2"])).toBe("float8_e5m2");
    expect(() => promoteDtypes(["float64"])).toThrow(TypeError);
  });
});

describe("autocast()", () => {
  test("nests, and an inner float32 policy turns autocast off", () => {
    const seen: (string | null)[] = [];
    const inner = autocast(getPolicy("fp32"), () => {
      seen.push(currentPolicy()!.compute, autocastDtype("matmul", [F32]));
    });
    const outer = autocast(getPolicy("mixed_bf16"), () => {
      seen.push(autocastDtype("matmul", [F32]));
      inner();
      seen.push(autocastDtype("matmul", [F32]));
      autocast(getPolicy("mixed_f16"), () => seen.push(autocastDtype("matmul", [F32])))();
    });
    outer();
    expect(seen).toEqual([BF16, F32, F32, BF16, F16]);
    expect(currentPolicy()).toBe(null);
  });

  test("passes arguments and results through", () => {
    const add = autocast(getPolicy("mixed_bf16"), (a: number, b: number) => a + b);
    expect(add(2, 3)).toBe(5);
  });

  test("restores the previous policy when fn throws", () => {
    const failing = autocast(getPolicy("mixed_f16"), () => {
      throw new RangeError("boom");
    });
    autocast(getPolicy("mixed_bf16"), () => {
      expect(() => failing()).toThrow("boom");
      expect(currentPolicy()!.compute).toBe(BF16);
    })();
    expect(currentPolicy()).toBe(null);
  });

  test("an async fn keeps its policy across awaits, and code outside it never sees the policy", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const observed: (string | null)[] = [];
    const run = autocast(getPolicy("mixed_bf16"), async () => {
      observed.push(currentPolicy()?.compute ?? null);
      await gate;
      observed.push(currentPolicy()?.compute ?? null);
      return autocastDtype("matmul", [F32]);
    });
    const pending = run();
    // While fn awaits, the caller is outside autocast again.
    expect(currentPolicy()).toBe(null);
    expect(autocastDtype("matmul", [F32])).toBe(F32);
    // A concurrent autocast with another policy does not disturb fn's.
    const other = autocast(getPolicy("mixed_f16"), async () => {
      await null;
      return currentPolicy()?.compute;
    })();
    release();
    expect(await pending).toBe(BF16);
    expect(await other).toBe(F16);
    expect(observed).toEqual([BF16, BF16]);
    expect(currentPolicy()).toBe(null);
  });

  test("a rejected async fn leaves no policy behind", async () => {
    const failing = autocast(getPolicy("mixed_f16"), async () => {
      await null;
      throw new Error("async boom");
    });
    await expect(failing()).rejects.toThrow("async boom");
    expect(currentPolicy()).toBe(null);
  });

  test("rejects what is not a policy or a function", () => {
    expect(() => autocast({ compute: "bfloat16" } as never, () => 1)).toThrow(TypeError);
    expect(() => autocast(getPolicy("fp32"), 3 as never)).toThrow(TypeError);
  });
});

describe("autocastTensors()", () => {
  test("casts inputs with Tensor.to into the op's dtype and frees only its own casts", () => {
    using a = tensor([1.5, 3.140625, 65536.5], { dtype: "float32" });
    using b = tensor([2, 4, 8], { dtype: "bfloat16" });
    autocast(getPolicy("mixed_bf16"), () => {
      const matmul = autocastTensors("matmul", [a, b]);
      expect(matmul.dtype).toBe(BF16);
      expect(matmul.tensors[1]).toBe(b);
      expect(matmul.tensors[0]).not.toBe(a);
      expect([...matmul.tensors[0]!.toArray()]).toEqual([1.5, 3.140625, 65536]);
      const made = matmul.tensors[0]!;
      matmul.dispose();
      expect(made.disposed).toBe(true);
      expect(a.disposed || b.disposed).toBe(false);

      // CPU tensors follow torch's CPU lists: softmax runs in its input dtype, losses in float32.
      using softmax = autocastTensors("softmax", [b]);
      expect(softmax.dtype).toBe(BF16);
      expect(softmax.tensors[0]).toBe(b);
      using loss = autocastTensors("cross_entropy", [b]);
      expect(loss.dtype).toBe(F32);
      expect(loss.tensors[0]!.dtype).toBe(F32);
      expect([...loss.tensors[0]!.toArray()]).toEqual([2, 4, 8]);

      using add = autocastTensors("add", [a, b]);
      expect(add.dtype).toBe(F32);
      expect(add.tensors[0]).toBe(a);
      expect(add.tensors[1]!.dtype).toBe(F32);
    })();
    using outside = autocastTensors("matmul", [a]);
    expect(outside.tensors[0]).toBe(a);
    expect(() => autocastTensors("matmul", [a, 3 as never])).toThrow(TypeError);
  });
});

describe("autocast per device type", () => {
  test("the CPU table equals what torch.autocast('cpu', bfloat16) does, op by op (committed probe of torch 2.13)", () => {
    expect(cpuProbe.torch).toStartWith("2.13.");
    const probed = cpuProbe.ops as Record<string, string>;
    for (const [op, category] of Object.entries(probed))
      expect([op, autocastCategory(op, "cpu")]).toEqual([op, category]);
    // Every op of the CUDA table was probed, and the CPU table lists nothing the probe did not see.
    for (const op of Object.keys(AUTOCAST_OPS)) expect(Object.hasOwn(probed, op)).toBe(true);
    for (const op of Object.keys(AUTOCAST_OPS_CPU)) expect(Object.hasOwn(probed, op)).toBe(true);
  });

  test("cuda keeps PyTorch's CUDA lists; cpu runs softmax, norms, exp, log, pow, sum, mean, cumsum in the input dtype", () => {
    expect(AUTOCAST_OPS_BY_DEVICE.cuda).toBe(AUTOCAST_OPS);
    for (const op of [
      "softmax",
      "log_softmax",
      "layer_norm",
      "rms_norm",
      "group_norm",
      "exp",
      "log",
      "pow",
      "sum",
      "mean",
      "cumsum",
    ]) {
      expect(autocastCategory(op, "cuda")).toBe("float32");
      expect(autocastCategory(op, "cpu")).toBe("promote");
    }
    expect(autocastCategory("mv", "cpu")).toBe("promote");
    expect(autocastCategory("addmv", "cpu")).toBe("promote");
    expect(autocastCategory("mv", "cuda")).toBe("lower");
    expect(autocastCategory("scaled_dot_product_attention", "cpu")).toBe("lower");
  });

  test("autocastDtype() follows the op's device, else autocast's deviceType, else cuda", () => {
    const bf16 = getPolicy("mixed_bf16");
    const run = (deviceType?: "cpu" | "cuda") =>
      autocast(
        bf16,
        () => [
          autocastDtype("softmax", [BF16]),
          autocastDtype("softmax", [BF16], "cpu"),
          autocastDtype("softmax", [BF16], "cuda:0"),
          currentDeviceType(),
        ],
        deviceType === undefined ? {} : { deviceType },
      )();
    expect(run()).toEqual([F32, BF16, F32, "cuda"]);
    expect(run("cpu")).toEqual([BF16, BF16, F32, "cpu"]);
    expect(run("cuda")).toEqual([F32, BF16, F32, "cuda"]);
    expect(() => autocast(bf16, () => 1, { deviceType: "tpu" as never })).toThrow(/Unknown device "tpu"/);
  });
});
