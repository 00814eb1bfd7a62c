import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { getPolicy, POLICY_PRESETS, type Policy, type PolicyDtype, type Tensor, tensor } from "../src/mod.ts";

const DTYPES: readonly PolicyDtype[] = ["float32", "float16", "bfloat16"];
const SPELLINGS: Readonly<Record<PolicyDtype, readonly string[]>> = {
  float32: ["float32", "f32", "full"],
  float16: ["float16", "f16", "half"],
  bfloat16: ["bfloat16", "bf16"],
};
const KEY_SPELLINGS = {
  param: ["params", "param", "p"],
  compute: ["compute", "c"],
  output: ["output", "o"],
} as const;

const fields = (p: Policy) => [p.param, p.compute, p.output];

describe("getPolicy()", () => {
  test("parses any spelling, order and spacing of a full policy to the same policy", () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...DTYPES),
        fc.constantFrom(...DTYPES),
        fc.constantFrom(...DTYPES),
        fc.nat(),
        fc.nat(),
        fc.boolean(),
        (param, compute, output, spellingSeed, orderSeed, spaced) => {
          const wanted = { param, compute, output } as const;
          const parts = (["param", "compute", "output"] as const).map((field, i) => {
            const keys = KEY_SPELLINGS[field];
            const names = SPELLINGS[wanted[field]];
            const key = keys[(spellingSeed >> (2 * i)) % keys.length]!;
            const name = names[(spellingSeed >> (2 * i + 6)) % names.length]!;
            return spaced ? ` ${key} = ${name} ` : `${key}=${name}`;
          });
          const rotated = [...parts.slice(orderSeed % 3), ...parts.slice(0, orderSeed % 3)];
          const policy = getPolicy(rotated.join(","));
          expect(fields(policy)).toEqual([param, compute, output]);
          // toString prints a string that parses back to an equal policy.
          expect(fields(getPolicy(policy.toString()))).toEqual([param, compute, output]);
          expect(getPolicy(String(policy)).toString()).toBe(policy.toString());
        },
      ),
      { numRuns: 300 },
    );
  });

  test("missing parts default as jmp's do: compute follows params, output follows compute", () => {
    expect(fields(getPolicy("c=f16"))).toEqual(["float32", "float16", "float16"]);
    expect(fields(getPolicy("p=bf16"))).toEqual(["bfloat16", "bfloat16", "bfloat16"]);
    expect(fields(getPolicy("p=f16,c=bf16"))).toEqual(["float16", "bfloat16", "bfloat16"]);
    expect(fields(getPolicy("o=bf16"))).toEqual(["float32", "float32", "bfloat16"]);
    expect(fields(getPolicy("params=float32,compute=bfloat16,output=float32"))).toEqual([
      "float32",
      "bfloat16",
      "float32",
    ]);
  });

  test("a single dtype sets all three parts", () => {
    expect(fields(getPolicy("bf16"))).toEqual(["bfloat16", "bfloat16", "bfloat16"]);
    expect(fields(getPolicy("half"))).toEqual(["float16", "float16", "float16"]);
    expect(fields(getPolicy("full"))).toEqual(["float32", "float32", "float32"]);
  });

  test("presets are the policies they name", () => {
    expect(fields(getPolicy("fp32"))).toEqual(["float32", "float32", "float32"]);
    expect(fields(getPolicy("mixed_bf16"))).toEqual(["float32", "bfloat16", "float32"]);
    expect(fields(getPolicy("mixed_f16"))).toEqual(["float32", "float16", "float32"]);
    expect(fields(getPolicy("pure_bf16"))).toEqual(["bfloat16", "bfloat16", "bfloat16"]);
    for (const [name, text] of Object.entries(POLICY_PRESETS)) {
      expect(getPolicy(name).toString()).toBe(getPolicy(text).toString());
    }
  });

  test("an unparsable string throws SyntaxError quoting the bad part", () => {
    const cases: [string, RegExp][] = [
      ["", /Empty/],
      ["p=", /"p="/],
      ["x=f32", /"x"/],
      ["p=f33", /"f33"/],
      ["p=f32,,c=f16", /""/],
      ["p=f32,p=f16", /twice/],
      ["p=f32;c=f16", /"f32;c=f16"|"p=f32;c=f16"/],
      ["float64", /"float64"/],
      ["mixed", /"mixed"/],
    ];
    for (const [text, message] of cases) {
      expect(() => getPolicy(text)).toThrow(SyntaxError);
      expect(() => getPolicy(text)).toThrow(message);
    }
  });

  test("fp8 parses as a dtype but is refused with RangeError", () => {
    expect(() => getPolicy("c=e4m3")).toThrow(RangeError);
    expect(() => getPolicy(3 as unknown as string)).toThrow(TypeError);
  });

  test("policies are frozen values and withOutputDtype returns a new one", () => {
    const p = getPolicy("mixed_bf16");
    expect(Object.isFrozen(p)).toBe(true);
    const q = p.withOutputDtype("bf16");
    expect(fields(q)).toEqual(["float32", "bfloat16", "bfloat16"]);
    expect(p.output).toBe("float32");
  });
});

describe("castToParam(), castToCompute(), castToOutput()", () => {
  test("cast every tensor leaf to a new tensor and pass other leaves through", () => {
    using w = tensor([1.5, -2.25, 3.1415927], { dtype: "float32" });
    using b = tensor([0.5], { dtype: "bfloat16" });
    const label = new Int32Array([7]);
    const tree = { w, layers: [b, 3, "name", label], none: null };
    const policy = getPolicy("p=f32,c=bf16,o=f16");
    const computed = policy.castToCompute(tree) as { w: Tensor; layers: [Tensor, number, string, Int32Array] };
    try {
      expect(computed.w.dtype).toBe("bfloat16");
      expect(computed.w).not.toBe(w);
      // A leaf already in the target dtype is still a new tensor: the caller owns every tensor leaf.
      expect(computed.layers[0]).not.toBe(b);
      expect(computed.layers[0].dtype).toBe("bfloat16");
      expect(computed.layers.slice(1)).toEqual([3, "name", label]);
      expect(computed.layers[3]).toBe(label);
      expect([...computed.w.toArray()]).toEqual([1.5, -2.25, 3.140625]);
      // The input tree is untouched.
      expect(w.dtype).toBe("float32");
      expect(w.toArray()[2]).toBe(Math.fround(3.1415927));
    } finally {
      computed.w.dispose();
      computed.layers[0].dispose();
    }
    const params = policy.castToParam([b]) as Tensor[];
    const outputs = policy.castToOutput([w]) as Tensor[];
    expect(params[0]!.dtype).toBe("float32");
    expect(outputs[0]!.dtype).toBe("float16");
    params[0]!.dispose();
    outputs[0]!.dispose();
  });

  test("getPolicy() names the presets for an unknown single word such as mixed_fp16", () => {
    expect(() => getPolicy("mixed_fp16")).toThrow(SyntaxError);
    expect(() => getPolicy("mixed_fp16")).toThrow(
      /^Unknown policy "mixed_fp16": use a preset \(fp32, mixed_bf16, mixed_f16, pure_bf16\)/,
    );
    expect(() => getPolicy("p=f32,c=halfish")).toThrow(/Unknown dtype "halfish"/);
    expect(getPolicy("bf16").compute).toBe("bfloat16");
    expect(() => getPolicy("float8_e4m3fn")).toThrow(RangeError);
  });
});
