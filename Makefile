# Two commands: `make demo` runs the main job end to end on the embedded survey;
# `make test` runs the test suite. Both set up .venv themselves on first use.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
VENV ?= .venv
DEMO_DIR ?= demo
DEMO_VISITS ?= 4
DEMO_DETECTORS ?= 4
DEMO_SIZE ?= 1024
DEMO_SEED ?= 1
JOBS ?= 2

# The first Python >= 3.12 on PATH, else the newest one pyenv has installed.
find_python = $(shell \
  for p in python3.12 python3.13 python3.14 python3 python; do \
    c=$$(command -v $$p 2>/dev/null) || continue; \
    $$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$c; exit 0; }; \
  done; \
  root=$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv); \
  for c in $$(ls -d $$root/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -V); do \
    $$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$c; exit 0; }; \
  done)

STAMP := $(VENV)/.installed

.PHONY: demo demo-difference test setup lint clean-demo train-default

setup: $(STAMP)

$(STAMP): pyproject.toml
	@py="$(find_python)"; \
	if [ -z "$$py" ]; then echo "No Python >= 3.12 found on PATH or in pyenv; install one." >&2; exit 1; fi; \
	echo "Setting up $(VENV) with $$py"; \
	[ -x $(VENV)/bin/python ] || $$py -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --progress-bar off -e '.[test]'
	@touch $@

demo: $(STAMP)
	@rm -rf $(DEMO_DIR)/repo
	@mkdir -p $(DEMO_DIR)
	@echo "== 1/3 Embedded survey: $(DEMO_VISITS) visits x $(DEMO_DETECTORS) detectors of $(DEMO_SIZE)^2 px"
	$(VENV)/bin/trail-detect make-repo $(DEMO_DIR)/repo --visits $(DEMO_VISITS) --detectors $(DEMO_DETECTORS) \
	  --size $(DEMO_SIZE) --seed $(DEMO_SEED) -j $(JOBS)
	@echo "== 2/3 Main job: pipelines/EndToEnd.yaml (injection with truth, stack-like detection, training tiles, CNN detection, evaluation)"
	TRAIL_DETECT_DIR=$(CURDIR) $(VENV)/bin/pipetask run -b $(DEMO_DIR)/repo -i SimCam/runs/survey,SimCam/defaults \
	  -o SimCam/runs/end_to_end -p pipelines/EndToEnd.yaml --register-dataset-types -j $(JOBS) \
	  2>&1 | grep --line-buffered -E "Executed|Injected [0-9]|Drew|tiles \(|Found [0-9]+ trails|Goals met|ERROR|rror:"
	@echo "== 3/3 Star-field pretraining sets: pipelines/StarPretraining.yaml"
	TRAIL_DETECT_DIR=$(CURDIR) $(VENV)/bin/pipetask run -b $(DEMO_DIR)/repo -i SimCam/defaults \
	  -o SimCam/runs/star_pretraining -p pipelines/StarPretraining.yaml --register-dataset-types -j $(JOBS) \
	  -d "instrument = 'SimCam' AND detector IN ($(shell seq -s ', ' 0 $$(($(DEMO_DETECTORS) - 1))))" \
	  2>&1 | grep --line-buffered -E "Executed|Star field|star tiles|ERROR|rror:"
	@echo "== What was made"
	$(VENV)/bin/butler query-collections $(DEMO_DIR)/repo
	$(VENV)/bin/butler query-datasets $(DEMO_DIR)/repo injected_visit_image --collections SimCam/runs/end_to_end
	$(VENV)/bin/python -m lsst.trail_detect.demo $(DEMO_DIR)/repo $(DEMO_DIR)
	@echo "== Headline: completeness per nu_det bin (CNN, stack-like 5 sigma, Hough, ideal), false positives, speed"
	$(VENV)/bin/trail-detect report $(DEMO_DIR)/repo --collections SimCam/runs/end_to_end --out $(DEMO_DIR)/report
	@echo "== Look further: $(VENV)/bin/butler query-datasets $(DEMO_DIR)/repo '*' --collections SimCam/runs/end_to_end"
	@echo "   and README.md, 'Looking at the outputs'."

# The same survey searched on difference images (after `make demo`): templates, subtraction, the search
# with the model's calibration for difference images, matching and evaluation (pipelines/EndToEndDifference.yaml).
demo-difference: $(STAMP)
	@test -d $(DEMO_DIR)/repo || { echo "No $(DEMO_DIR)/repo: run 'make demo' first." >&2; exit 1; }
	@echo "== Difference images: pipelines/EndToEndDifference.yaml (templates, injection, subtraction, detection, evaluation)"
	TRAIL_DETECT_DIR=$(CURDIR) $(VENV)/bin/pipetask run -b $(DEMO_DIR)/repo -i SimCam/runs/survey,SimCam/defaults \
	  -o SimCam/runs/difference -p pipelines/EndToEndDifference.yaml --register-dataset-types -j $(JOBS) \
	  -c detectTrails:threads=1 \
	  2>&1 | grep --line-buffered -E "Executed|Subtracted|Found [0-9]+ trails|Goals met|ERROR|rror:"
	@echo "== Headline on difference images"
	$(VENV)/bin/trail-detect report $(DEMO_DIR)/repo --collections SimCam/runs/difference --out $(DEMO_DIR)/report_difference

# The shipped default model: a survey of TRAIN_VISITS x 9 detectors, its trail and star training sets, the
# star detector and the trail segmenter pretrained from it, all from TRAIN_SEED; the model is calibrated with
# the line search on the survey's validation and test images (never trained on) and copied into the package
# (python/lsst/trail_detect/data/), where make-repo finds it; a second survey's difference images give its
# calibration for difference images.
TRAIN_DIR ?= build/train-default
TRAIN_VISITS ?= 6
TRAIN_SEED ?= 2026
TRAIN_CONFIG ?= config/trainDefault.py
TRAIN_STAR_CONFIG ?= config/trainStarDefault.py
# The survey of difference images the model's calibration for them is made on (seeds no test uses).
TRAIN_DIFFERENCE_SEED ?= 77
train-default: $(STAMP)
	rm -rf $(TRAIN_DIR) && mkdir -p $(TRAIN_DIR)
	$(VENV)/bin/trail-detect make-repo $(TRAIN_DIR)/repo --visits $(TRAIN_VISITS) --detectors 9 --size 1024 \
	  --seed $(TRAIN_SEED) -j $(JOBS)
	TRAIL_DETECT_DIR=$(CURDIR) $(VENV)/bin/pipetask run -b $(TRAIN_DIR)/repo -i SimCam/runs/survey,SimCam/defaults \
	  -o SimCam/runs/train_default/data -p pipelines/EndToEnd.yaml --register-dataset-types -j $(JOBS)
	TRAIL_DETECT_DIR=$(CURDIR) $(VENV)/bin/pipetask run -b $(TRAIN_DIR)/repo -i SimCam/defaults \
	  -o SimCam/runs/train_default/stars -p pipelines/StarPretraining.yaml --register-dataset-types -j $(JOBS)
	TRAIL_DETECT_DIR=$(CURDIR) $(VENV)/bin/pipetask --long-log run -b $(TRAIN_DIR)/repo \
	  -i SimCam/runs/train_default/data,SimCam/runs/train_default/stars -o SimCam/runs/train_default/models \
	  -p pipelines/TrainTrailDetector.yaml -C trainStarDetector:$(TRAIN_STAR_CONFIG) -C trainTrailDetector:$(TRAIN_CONFIG) \
	  --register-dataset-types -j 1
	$(VENV)/bin/trail-detect export-model $(TRAIN_DIR)/repo $(TRAIN_DIR)/trail_detector_uncalibrated.safetensors \
	  --collections SimCam/runs/train_default/models
	$(VENV)/bin/trail-detect calibrate $(TRAIN_DIR)/repo python/lsst/trail_detect/data/trail_detector_default.safetensors \
	  --collections SimCam/runs/train_default/data --model $(TRAIN_DIR)/trail_detector_uncalibrated.safetensors --method logistic --threads 2 \
	  --split validation,test --line-search
	$(VENV)/bin/trail-detect make-repo $(TRAIN_DIR)/difference_repo --visits 4 --detectors 6 --size 1024 \
	  --seed $(TRAIN_DIFFERENCE_SEED) -j $(JOBS)
	TRAIL_DETECT_DIR=$(CURDIR) $(VENV)/bin/pipetask run -b $(TRAIN_DIR)/difference_repo -i SimCam/runs/survey,SimCam/defaults \
	  -o SimCam/runs/difference -p "pipelines/EndToEndDifference.yaml#templates,injection,subtraction" \
	  -c generateTrailCatalog:seed=$(TRAIN_DIFFERENCE_SEED) -c injectTrails:noise_seed=$(TRAIN_DIFFERENCE_SEED) \
	  --register-dataset-types -j $(JOBS)
	$(VENV)/bin/trail-detect calibrate $(TRAIN_DIR)/difference_repo python/lsst/trail_detect/data/trail_detector_default.safetensors \
	  --collections SimCam/runs/difference --model python/lsst/trail_detect/data/trail_detector_default.safetensors \
	  --split all --line-search --source-search --image-type injected_difference_image --calibration difference --threads 2

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadscope --durations=15 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check python tests benchmarks

clean-demo:
	rm -rf $(DEMO_DIR)
