# PocketSD: every target sets itself up; `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/pocketsd
MODEL  ?= reference
RECIPE ?= budget
OUT    ?= build

.PHONY: setup demo test docs tiny-model check-model compress convert bench bench-compress clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench,app,docs]'
	@touch $@

demo: setup
	$(PY) -m pocketsd.demo --out $(OUT)/demo

# The Python suite, then the Swift package's (which sets up its own toolchain on first use; see test-swift).
test: setup
	$(PY) -m pytest
	$(MAKE) docs
	$(MAKE) test-swift

# The documentation site (mkdocs.yml, docs/): results pages rendered from benchmarks/results/*.json, then built
# with --strict into site/ (not committed).
docs: setup
	$(PY) docs/render.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

REF_MODEL := python/pocketsd/data/reference/model

tiny-model: setup
	$(PY) -m pocketsd.refmodel.train --max-minutes 78
	$(PY) -m pocketsd.refmodel.train --colour-polish python/pocketsd/data/reference/model --colour-polish-steps 1300
	# version 2: two fine-tune stages (positions, two-object scenes), each stopped by its time cap; resumable
	$(PY) -m pocketsd.refmodel.train --finetune $(REF_MODEL) --out build/refmodel-v2/stage1 --results build/refmodel-v2/results1 --version 2 --unet-steps 2600 --unet-images 12000 --batch 64 --lr 2e-4 --p-position 0.8 --p-pair 0.2 --max-minutes 52
	$(PY) -m pocketsd.refmodel.train --finetune build/refmodel-v2/stage1 --out build/refmodel-v2/stage2 --results build/refmodel-v2/results2 --version 2 --unet-steps 2000 --unet-images 12000 --batch 32 --lr 3e-4 --p-position 0.9 --p-pair 0.25 --high-noise-share 0.5 --seed 1 --max-minutes 25
	for c in unet text_encoder text_encoder_2; do rm -rf $(REF_MODEL)/$$c && cp -r build/refmodel-v2/stage2/$$c $(REF_MODEL)/$$c; done
	cp build/refmodel-v2/stage2/model_card.json $(REF_MODEL)/model_card.json
	$(PY) -m pocketsd.refmodel.check
	$(PY) -m pocketsd.refmodel.train_controlnet --condition depth --steps 600 --max-minutes 22
	$(PY) -m pip install -q peft
	$(PY) -m pocketsd.refmodel.train_lora --style poster --steps 450 --seed 1 --max-minutes 14
	$(PY) -m pocketsd.refmodel.train_lora --style blueprint --steps 300 --seed 2 --max-minutes 14
	$(PY) -m pocketsd.refmodel.train_controlnet --max-minutes 35
	$(PY) -m pocketsd.refmodel.copyspace

check-model: setup
	$(PY) -m pocketsd.refmodel.check

compress: setup
	$(CLI) compress --model $(MODEL) $(if $(filter budget,$(RECIPE)),,--recipe $(RECIPE)) --out $(OUT)/compressed

convert: setup
	$(CLI) convert --model $(if $(wildcard $(OUT)/compressed/pocketsd.json),$(OUT)/compressed,$(MODEL)) --out $(OUT)/coreml

bench-compress: setup
	$(PY) benchmarks/compression.py
	$(PY) benchmarks/sdxl_scale.py sizes
	$(PY) benchmarks/sdxl_scale.py throughput
	@echo "(the whole real-size SDXL UNet, ~tens of minutes: $(PY) benchmarks/sdxl_scale.py whole)"

# Distillation gain against CPU-minutes at budgets 4.0/4.5/6.0 (2–3 CPU-hours on one thread; see the script's
# docstring for running the budgets as parallel processes and merging), and LoRA training memory.
.PHONY: bench-distill bench-lora-train
bench-distill: setup
	$(PY) benchmarks/distill.py

bench-lora-train: setup
	$(PY) benchmarks/lora_train_memory.py

# The web demo: fp16 against 4-bit side by side (the compressed model is made on first start, cached in build/app/).
# Open http://127.0.0.1:7860; APP_HOST=0.0.0.0 serves it to other devices on the network (with a warning).
.PHONY: app
APP_HOST ?= 127.0.0.1
APP_PORT ?= 7860
app: setup
	$(CLI) app --host $(APP_HOST) --port $(APP_PORT)

bench: setup
	$(CLI) bench

# The web demo under load: 1, 8 and 32 clients against a server on 127.0.0.1 that the script starts and stops
# (a few minutes; run it on a quiet machine). Writes benchmarks/results/app_load.{json,md,png}.
.PHONY: bench-app-load
bench-app-load: setup
	$(PY) benchmarks/app_load.py

# The whole chain on a full-size SDXL (random SDXL-base-shaped weights built in build/sdxl-real-size, ~7 GB of disk;
# hours on 2 cores): the default `pocketsd compress` (CALIB_SIZE=WxH: its one optional flag), convert, info --memory,
# generate. APPLE_SRC=DIR also runs Apple's torch2coreml on the same UNet.
.PHONY: bench-real-size
bench-real-size: setup
	$(PY) benchmarks/sdxl_real_size.py $(if $(CALIB_SIZE),--calib-size $(CALIB_SIZE),) $(if $(APPLE_SRC),--apple-src $(APPLE_SRC),)

# Peak RSS of the default `pocketsd compress` on a random SDXL-layout model many blocks large, against its largest
# block and the whole model (run it alone: the peak is the child's own, but its time is not). Writes
# benchmarks/results/streaming_memory.{json,md}.
.PHONY: bench-streaming-memory
bench-streaming-memory: setup
	$(PY) benchmarks/streaming_memory.py

clean:
	rm -rf $(OUT)

# Swift package (swift-app/): on Linux, builds it and runs its tests in a Debian trixie chroot with Debian's
# swiftlang (made on first use, needs root), then type-checks the Apple-only engine and app code against the
# stand-ins of swift-app/scripts/stand-ins/; on a Mac, `swift test`. See swift-app/README.md, "Tests".
.PHONY: test-swift
test-swift:
	python3 swift-app/scripts/check_availability.py
	@if [ "$$(uname)" = Darwin ]; then cd swift-app && swift test; \
	else swift-app/scripts/linux-swift.sh test && swift-app/scripts/typecheck-engine.sh; fi

# The artifact readers under Hypothesis with fresh randomness and 20,000 examples per property (CI runs the same file
# derandomized with ~2,400 in all); HYPOTHESIS_PROFILE picks the profile registered in tests/test_fuzz_readers.py.
.PHONY: fuzz
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_fuzz_readers.py -q --hypothesis-show-statistics
