/**
 * PEFT LoRA adapters on disk: adapter_config.json and adapter_model.safetensors with PEFT's tensor
 * names, `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` (no adapter name such as
 * `.default.`: PEFT strips it on save and adds it back on load).
 *
 * @module
 */

import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { LoraAdapters, LoraConfig } from "../nn/_model.ts";
import { isTensor, type Tensor } from "../tensor.ts";
import { openSafetensors, saveFlatSafetensors } from "./safetensors.ts";

const PREFIX = "base_model.model.";

/** What {@linkcode loadPeftAdapter} returns. */
export interface PeftAdapter {
  /** `<module>.lora_A.weight` / `.lora_B.weight` -> tensor (the caller owns them). */
  readonly adapters: Record<string, Tensor>;
  /** r, alpha, targetModules, dropout from adapter_config.json. */
  readonly config: LoraConfig;
  /** adapter_config.json as PEFT wrote it. */
  readonly peftConfig: Readonly<Record<string, unknown>>;
}

/**
 * Writes adapters as a PEFT LoRA adapter directory that `PeftModel.from_pretrained(model, dir)`
 * loads.
 *
 * @param dir The directory (created if missing).
 * @param adapters `<module>.lora_A.weight` / `.lora_B.weight` tensors.
 * @param loraConfig r, alpha, targetModules, dropout.
 * @param extra More adapter_config.json fields (e.g. base_model_name_or_path).
 * @returns The files written.
 * @example
 * ```ts
 * import { loadPeftAdapter, savePeftAdapter } from "./peft.ts";
 * import { mkdtempSync } from "node:fs";
 * import { tmpdir } from "node:os";
 * const { adapters, config } = loadPeftAdapter("test/fixtures/models/llama_lora");
 * const dir = mkdtempSync(`${tmpdir()}/adapter-`);
 * savePeftAdapter(dir, adapters, config);
 * if (loadPeftAdapter(dir).config.r !== 4) throw new Error("round trip");
 * ```
 */
export function savePeftAdapter(
  dir: string,
  adapters: LoraAdapters,
  loraConfig: LoraConfig,
  extra: Readonly<Record<string, unknown>> = {},
): string[] {
  const entries: [string, Tensor][] = [];
  for (const [name, t] of Object.entries(adapters)) {
    if (!/\.lora_[AB]\.weight$/.test(name) || !isTensor(t)) {
      throw new TypeError(`savePeftAdapter: ${JSON.stringify(name)} is not a <module>.lora_A/lora_B.weight tensor`);
    }
    entries.push([`${PREFIX}${name}`, t]);
  }
  const config = {
    peft_type: "LORA",
    task_type: null,
    base_model_name_or_path: null,
    inference_mode: true,
    r: loraConfig.r,
    lora_alpha: loraConfig.alpha,
    lora_dropout: loraConfig.dropout ?? 0,
    target_modules: [...loraConfig.targetModules],
    bias: "none",
    fan_in_fan_out: false,
    init_lora_weights: true,
    use_rslora: false,
    use_dora: false,
    modules_to_save: null,
    ...extra,
  };
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "adapter_config.json"), `${JSON.stringify(config, null, 2)}\n`);
  saveFlatSafetensors(join(dir, "adapter_model.safetensors"), entries, { format: "pt" });
  return ["adapter_config.json", "adapter_model.safetensors"];
}

/**
 * Reads a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
 * Refuses what mixprec does not run: other PEFT types, DoRA, rsLoRA, per-module ranks.
 *
 * @param dir The adapter directory.
 * @returns `{ adapters, config, peftConfig }`.
 * @example
 * ```ts
 * import { loadPeftAdapter } from "./peft.ts";
 * const { adapters, config } = loadPeftAdapter("test/fixtures/models/llama_lora");
 * if (config.r !== 4 || !("model.layers.0.self_attn.q_proj.lora_A.weight" in adapters)) throw new Error("names");
 * ```
 */
export function loadPeftAdapter(dir: string): PeftAdapter {
  const configPath = join(dir, "adapter_config.json");
  const weightsPath = join(dir, "adapter_model.safetensors");
  if (!existsSync(configPath) || !existsSync(weightsPath)) {
    throw new TypeError(
      `${dir} is not a PEFT adapter directory: it needs adapter_config.json and adapter_model.safetensors`,
    );
  }
  const peftConfig = JSON.parse(readFileSync(configPath, "utf8")) as Record<string, unknown>;
  if (peftConfig.peft_type !== "LORA") {
    throw new RangeError(
      `loadPeftAdapter: peft_type ${JSON.stringify(peftConfig.peft_type)} is not supported: use LORA`,
    );
  }
  for (const key of ["use_dora", "use_rslora", "fan_in_fan_out"]) {
    if (peftConfig[key] === true) throw new RangeError(`loadPeftAdapter: ${key} adapters are not supported`);
  }
  for (const key of ["rank_pattern", "alpha_pattern"]) {
    const pattern = peftConfig[key];
    if (pattern !== undefined && pattern !== null && Object.keys(pattern).length > 0) {
      throw new RangeError(`loadPeftAdapter: ${key} (per-module ranks or alphas) is not supported`);
    }
  }
  const file = openSafetensors(weightsPath);
  const adapters: Record<string, Tensor> = {};
  for (const name of file.names) {
    const leaf = file.tensor(name);
    if (!isTensor(leaf)) continue;
    adapters[name.replace(PREFIX, "").replace(/\.lora_([AB])\.[^.]+\.weight$/, ".lora_$1.weight")] = leaf;
  }
  const targets = peftConfig.target_modules;
  const config: LoraConfig = Object.freeze({
    targetModules: Array.isArray(targets) ? (targets as string[]) : [String(targets)],
    r: peftConfig.r as number,
    alpha: peftConfig.lora_alpha as number,
    dropout: (peftConfig.lora_dropout as number | undefined) ?? 0,
  });
  return { adapters, config, peftConfig };
}
