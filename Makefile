# diffdenoise: every target that needs the virtual environment creates it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/tiny.yaml
ARGS ?=
CLEAN_DIR ?=
NOISE_DIR ?=
NAME ?=
NOISY_DIR ?=
SAMPLE_RATE ?= 16000
SHARD_ARGS ?=
DEMO_DIR := demo
DEMO_MINUTES ?= 10
DEMO_STEPS ?= 1000

.PHONY: install test test-fast lint format demo shards train infer eval bench quality quality-causal devcorpus reccorpus clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev,eval,export,cloud]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: $(STAMP)
	$(PY) -m diffdenoise.summary configs/*.yaml
	@test -f shards/demo/manifest.json || $(MAKE) --no-print-directory shards
	rm -rf runs/demo
	$(PY) launch/train.py configs/tiny.yaml train.run_name=demo train.max_steps=$(DEMO_STEPS) \
		train.val_every=200 checkpoint.every=200
	$(PY) -m diffdenoise.demo_data $(DEMO_DIR) --example --seed 1
	$(PY) -m diffdenoise.infer $(DEMO_DIR)/example_noisy.wav -c runs/demo/best.pt \
		-o $(DEMO_DIR)/example_denoised.wav --plot
	@echo "SI-SDR before and after, against the clean reference:"
	@$(PY) -m diffdenoise.metrics $(DEMO_DIR)/example_clean.wav \
		$(DEMO_DIR)/example_noisy.wav $(DEMO_DIR)/example_denoised.wav
	@echo "demo outputs: shards/demo/ (shards + manifest.json), runs/demo/ (best.pt, metrics.jsonl, wandb/),"
	@echo "  $(DEMO_DIR)/example_denoised.wav (+ .png spectrograms) from $(DEMO_DIR)/example_noisy.wav"

train: $(STAMP)
	@test -f shards/demo/manifest.json || $(MAKE) --no-print-directory shards
	$(PY) launch/train.py $(CONFIG) $(ARGS)

INPUT ?= $(DEMO_DIR)/example_noisy.wav
CKPT ?= runs/demo/best.pt
OUT ?=
EVAL_ARGS ?= --baseline

infer: $(STAMP)
	$(PY) -m diffdenoise.infer $(INPUT) -c $(CKPT) $(if $(OUT),-o $(OUT))

eval: $(STAMP)
	$(PY) -m diffdenoise.evaluate -c $(CKPT) --shards 'shards/demo/val-*.tar' $(EVAL_ARGS)

bench: $(STAMP)
	$(PY) -m diffdenoise.bench

QUALITY_MINUTES ?= 25
DEVCORPUS := data/devcorpus
QUALITY_CLEAN = $(or $(CLEAN_DIR),$(DEVCORPUS)/speech)
QUALITY_NOISE = $(or $(NOISE_DIR),$(DEVCORPUS)/noise)
QUALITY_ARGS ?=
quality: $(STAMP) $(if $(CLEAN_DIR),,$(DEVCORPUS)/speech/meta.json)
	$(PY) -m diffdenoise.quality --clean-dir $(QUALITY_CLEAN) --noise-dir $(QUALITY_NOISE) \
		--minutes $(QUALITY_MINUTES) $(QUALITY_ARGS)

# The quality cost of causality (bench B17): realtime.yaml against default.yaml, same budget.
quality-causal: $(STAMP) $(if $(CLEAN_DIR),,$(DEVCORPUS)/speech/meta.json)
	$(PY) -m diffdenoise.quality --clean-dir $(QUALITY_CLEAN) --noise-dir $(QUALITY_NOISE) \
		--minutes $(QUALITY_MINUTES) --recipes default,realtime --out bench/causal $(QUALITY_ARGS)

# About 30 minutes of TTS speech and 5 noises (../shared/devcorpus/build.py, Debian TTS voices).
DEVCORPUS_SCRIPT ?= ../shared/devcorpus/build.py
devcorpus: $(DEVCORPUS)/speech/meta.json

$(DEVCORPUS)/speech/meta.json: | $(STAMP)
	@command -v espeak-ng >/dev/null && command -v festival >/dev/null && command -v flite >/dev/null \
		|| (apt-get update -q && apt-get install -y -q espeak-ng flite festival festvox-kallpc16k \
		festvox-kdlpc16k fortune-mod fortunes fortunes-min)
	$(PY) $(DEVCORPUS_SCRIPT) $(DEVCORPUS) --minutes 30 --seed 1

# Recorded speech (KTuberling's words, 26 languages; KLettres' letters, for training only)
# and recorded noise (one game's music and sound effects to test on, another's to train
# on) from Debian packages that are not reserved for the independent evaluation.
RECCORPUS := data/reccorpus
reccorpus: $(RECCORPUS)/train-noise/sfx.wav

$(RECCORPUS)/train-noise/sfx.wav: | $(STAMP)
	$(PY) -m diffdenoise.reccorpus $(RECCORPUS)

shards: $(STAMP)
ifeq ($(CLEAN_DIR),)
	$(PY) -m diffdenoise.demo_data $(DEMO_DIR)/gt_audio --minutes $(DEMO_MINUTES) --seed 0
	$(PY) -m diffdenoise.shard $(DEMO_DIR)/gt_audio --name demo --sample-rate $(SAMPLE_RATE) \
		--val-fraction 0.1 --max-seconds 4 --shard-mb 2 --workers 2 $(SHARD_ARGS)
else
	$(PY) -m diffdenoise.shard $(CLEAN_DIR) --name $(or $(NAME),$(notdir $(CLEAN_DIR:/=))) \
		--sample-rate $(SAMPLE_RATE) $(if $(NOISY_DIR),--noisy-dir $(NOISY_DIR)) $(SHARD_ARGS)
endif
ifneq ($(NOISE_DIR),)
	$(PY) -m diffdenoise.shard $(NOISE_DIR) --kind noise --name $(or $(NAME),$(notdir $(CLEAN_DIR:/=)),demo)_noise \
		--sample-rate $(SAMPLE_RATE) $(SHARD_ARGS)
endif

clean:
	rm -rf $(DEMO_DIR) runs/*/ shards/*/ bench/results.json .pytest_cache
