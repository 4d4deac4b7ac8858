# Two commands do everything on a fresh machine:
#   make demo   - the main job on the embedded synthetic data: data -> COCO -> train -> evaluate
#   make test   - the whole test suite
# Both create or refresh .venv first, and skip that step when nothing changed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where torch is already installed (Colab, a laptop) pass TORCH_SPEC= to keep it.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
DEMO_DIR ?= outputs/demo
# extra flags for the demo training, e.g. DEMO_TRAIN_ARGS="--max-iter 20" for a quick look
DEMO_TRAIN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv demo test clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install --quiet $(TORCH_SPEC))
	$(PY) -m pip install --quiet -e . -r requirements-dev.txt
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/make_synthetic.py $(DEMO_DIR)/labelme --images 60 --seed 0
	$(PY) scripts/labelme_to_coco.py $(DEMO_DIR)/labelme $(DEMO_DIR)/coco \
		--val-fraction 0.2 --seed 0 --preview $(DEMO_DIR)/coco/samples.png
	$(PY) scripts/train.py --preset demo --resume --train-json $(DEMO_DIR)/coco/train.json \
		--val-json $(DEMO_DIR)/coco/val.json --output-dir $(DEMO_DIR)/model $(DEMO_TRAIN_ARGS)
	$(PY) scripts/evaluate.py --model-dir $(DEMO_DIR)/model --json $(DEMO_DIR)/coco/val.json

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
