import { afterAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { main } from "../../src/cli.ts";
import { convertCheckpoint } from "../../src/io/convert.ts";
import { fromPretrained, savePretrained } from "../../src/io/pretrained.ts";
import { loadPeftAdapter, savePeftAdapter } from "../../src/io/peft.ts";
import { openSafetensors } from "../../src/io/safetensors.ts";
import { autocast } from "../../src/autocast.ts";
import { injectLora } from "../../src/nn/mod.ts";
import { getPolicy } from "../../src/policy.ts";
import { validatePrecisionConfig } from "../../src/precision_config.ts";

const FIXTURES = join(import.meta.dir, "../fixtures/models");
const scratch = mkdtempSync(join(tmpdir(), "mixprec-pretrained-"));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
const ids = [5, 17, 200, 3];

describe("fromPretrained / savePretrained", () => {
  test("a sharded save loads back to the same logits, with config.json's dtype updated", () => {
    const model = fromPretrained(join(FIXTURES, "llama"), { dtype: "bfloat16" });
    const dir = join(scratch, "sharded");
    const files = savePretrained(dir, model.config, model.params, { maxShardBytes: 200_000 });
    expect(files).toContain("model.safetensors.index.json");
    expect(files.filter((f) => f.startsWith("model-")).length).toBeGreaterThan(2);
    const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    expect(config.dtype).toBe("bfloat16");
    const again = fromPretrained(dir);
    expect(again.params["model.norm.weight"]!.dtype).toBe("bfloat16");
    using a = model.apply(model.params, ids);
    using b = again.apply(again.params, ids);
    expect([...b.toArray()]).toEqual([...a.toArray()]);
  });

  test("tied embeddings: lm_head is not written and the embedding serves as the head", () => {
    const model = fromPretrained(join(FIXTURES, "llama"));
    const { "lm_head.weight": head, ...rest } = model.params;
    const dir = join(scratch, "tied");
    savePretrained(
      dir,
      { ...model.config, tie_word_embeddings: true },
      { ...rest, "lm_head.weight": rest["model.embed_tokens.weight"]! },
    );
    expect(openSafetensors(join(dir, "model.safetensors")).names).not.toContain("lm_head.weight");
    const tied = fromPretrained(dir);
    using logits = tied.apply(tied.params, ids);
    expect(logits.shape).toEqual([1, 4, 256]);
    head!.dispose();
  });

  test("transformers 4 keys (torch_dtype, rope_theta) are read and written", () => {
    const dir = join(scratch, "v4");
    cpSync(join(FIXTURES, "llama"), dir, { recursive: true });
    const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
    const { rope_parameters, dtype, ...v4 } = config;
    writeFileSync(
      join(dir, "config.json"),
      JSON.stringify({ ...v4, torch_dtype: dtype, rope_theta: rope_parameters.rope_theta }),
    );
    const fresh = fromPretrained(dir);
    const reference = fromPretrained(join(FIXTURES, "llama"));
    using a = fresh.apply(fresh.params, ids);
    using b = reference.apply(reference.params, ids);
    expect([...a.toArray()]).toEqual([...b.toArray()]);
    savePretrained(join(scratch, "v4-out"), fresh.config, fresh.params);
    expect(JSON.parse(readFileSync(join(scratch, "v4-out/config.json"), "utf8")).torch_dtype).toBe("float32");
  });

  test("an unknown model_type is refused, naming the supported ones", () => {
    const dir = join(scratch, "gpt_neox");
    cpSync(join(FIXTURES, "llama"), dir, { recursive: true });
    writeFileSync(join(dir, "config.json"), JSON.stringify({ model_type: "gpt_neox" }));
    expect(() => fromPretrained(dir)).toThrow(/"gpt_neox" is not supported: mixprec runs llama, bert/);
    expect(() => fromPretrained(join(scratch, "missing"))).toThrow(TypeError);
  });
});

describe("LoRA precision", () => {
  test("a bfloat16 base with float16 adapters under mixed precision is accepted", () => {
    const check = validatePrecisionConfig({
      params: "float32",
      compute: "bfloat16",
      lora: { base: "bfloat16", adapters: "float16" },
    });
    expect(check.config.lora).toEqual({ base: "bfloat16", adapters: "float16" });
  });

  test("an int8 or int4 base under mixed precision is refused with the validator's message", () => {
    const model = fromPretrained(join(FIXTURES, "llama"));
    for (const baseDtype of ["int8", "int4"] as const) {
      expect(() =>
        injectLora(model.params, {
          targetModules: ["q_proj"],
          r: 2,
          alpha: 2,
          baseDtype,
          precision: { params: "float32", compute: "bfloat16" },
        }),
      ).toThrow(/cannot be combined with/);
    }
  });

  test("each base storage runs: bfloat16, float16, int8 and int4 bases with float32/float16/bfloat16 adapters", () => {
    const model = fromPretrained(join(FIXTURES, "llama"));
    using reference = model.apply(model.params, ids);
    const ref = reference.toArray();
    for (const [baseDtype, adapterDtype, bound] of [
      ["bfloat16", "float16", 0.1],
      ["float16", "bfloat16", 0.05],
      ["int8", "float32", 0.1],
      ["int4", "float32", 0.5],
    ] as const) {
      const { adapters, frozen } = injectLora(model.params, {
        targetModules: ["q_proj", "v_proj"],
        r: 2,
        alpha: 4,
        baseDtype,
        adapterDtype,
      });
      expect(adapters["model.layers.0.self_attn.q_proj.lora_A.weight"]!.dtype).toBe(adapterDtype);
      using logits = model.apply(frozen, ids, { adapters });
      const out = logits.toArray();
      let worst = 0;
      for (let i = 0; i < out.length; i++) worst = Math.max(worst, Math.abs(out[i]! - ref[i]!));
      expect(worst).toBeLessThan(bound);
    }
  });

  test("each branch computes in its declared dtype, and a quantized base refuses a low-precision compute", () => {
    const model = fromPretrained(join(FIXTURES, "llama"));
    using reference = model.apply(model.params, ids);
    const ref = reference.toArray();
    const worst = (logits: Float32Array) => logits.reduce((m, v, i) => Math.max(m, Math.abs(v - ref[i]!)), 0);
    const common = { targetModules: ["q_proj", "v_proj"], r: 2, alpha: 4, baseDtype: "bfloat16" } as const;
    const wide = injectLora(model.params, { ...common, baseCompute: "float32", adapterCompute: "float32" });
    const low = injectLora(model.params, {
      ...common,
      adapterDtype: "float16",
      baseCompute: "bfloat16",
      adapterCompute: "float16",
    });
    using wideLogits = model.apply(wide.frozen, ids, { adapters: wide.adapters });
    using lowLogits = model.apply(low.frozen, ids, { adapters: low.adapters });
    // The bfloat16 matmuls in the adapted modules add rounding the float32 compute does not.
    expect(worst(lowLogits.toArray())).toBeGreaterThan(worst(wideLogits.toArray()));
    expect(worst(lowLogits.toArray())).toBeLessThan(0.1);
    expect(() => injectLora(model.params, { ...common, baseDtype: "int8", baseCompute: "bfloat16" })).toThrow(
      /cannot be combined with/,
    );
    const int8 = injectLora(model.params, { ...common, baseDtype: "int8" });
    const underAutocast = autocast(getPolicy("mixed_bf16"), () =>
      model.apply(int8.frozen, ids, { adapters: int8.adapters }),
    );
    expect(underAutocast).toThrow(/cannot be combined with/);
  });

  test("PEFT's adapter loads, saves in PEFT's layout and loads back unchanged", () => {
    const { adapters, config } = loadPeftAdapter(join(FIXTURES, "llama_lora"));
    const dir = join(scratch, "adapter");
    savePeftAdapter(dir, adapters, config);
    const names = openSafetensors(join(dir, "adapter_model.safetensors")).names;
    expect(names).toContain("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
    expect(names.some((n) => n.includes(".default."))).toBe(false);
    const back = loadPeftAdapter(dir);
    expect(back.config).toMatchObject({ r: 4, alpha: 8 });
    for (const [name, t] of Object.entries(adapters))
      expect([...back.adapters[name]!.toArray()]).toEqual([...t.toArray()]);
  });
});

describe("mixprec convert on model directories", () => {
  test("a sharded directory converts to bfloat16 with config.json's dtype rewritten", () => {
    const model = fromPretrained(join(FIXTURES, "llama"));
    const source = join(scratch, "convert-in");
    savePretrained(source, model.config, model.params, { maxShardBytes: 300_000 });
    writeFileSync(join(source, "tokenizer.json"), "{}");
    const target = join(scratch, "convert-out");
    const report = convertCheckpoint(source, target, { to: "bf16" });
    expect(report.total.converted).toBe(Object.keys(model.params).length);
    expect(readdirSync(target).sort()).toEqual(readdirSync(source).sort());
    expect(JSON.parse(readFileSync(join(target, "config.json"), "utf8")).dtype).toBe("bfloat16");
    const converted = fromPretrained(target);
    expect(converted.params["lm_head.weight"]!.dtype).toBe("bfloat16");
  });

  test("the CLI converts a single-file directory and gives clear errors instead of EISDIR", () => {
    const target = join(scratch, "cli-out");
    expect(main(["convert", join(FIXTURES, "bert"), target, "--to", "float16"])).toBe(0);
    expect(existsSync(join(target, "model.safetensors"))).toBe(true);
    expect(() => convertCheckpoint(join(FIXTURES, "bert/model.safetensors"), target, { to: "bf16" })).toThrow(
      /is a directory: name the output file/,
    );
    expect(() => convertCheckpoint(join(FIXTURES, "bert"), join(target, "model.safetensors"), { to: "bf16" })).toThrow(
      /is a file: name an output directory/,
    );
    expect(() => convertCheckpoint(join(scratch, "nothing"), target, { to: "bf16" })).toThrow(/does not exist/);
  });
});
