/**
 * One recipe of the fine-tuning demo in its own process (so its peak memory is its own): reads the
 * options as JSON from argv, prints progress and the result as JSON lines on stdout.
 *
 * @module
 */

import { type FinetuneOptions, type FinetuneRecipe, runFinetune } from "./_finetune_model.ts";

const [recipe, json] = Bun.argv.slice(2);
const options = JSON.parse(json!) as FinetuneOptions;
const result = runFinetune(recipe as FinetuneRecipe, options, (progress) => console.log(JSON.stringify({ progress })));
console.log(JSON.stringify({ result }));
