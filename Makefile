# Two commands do everything on a fresh machine:
#   make demo   - the main job on the embedded synthetic data: data -> COCO -> train -> evaluate -> serve
#   make test   - the whole test suite
# Both create or refresh .venv first, and skip that step when nothing changed: `make demo` installs the
# kit alone (torch and requirements.txt), `make test` adds the test tools (requirements-dev.txt),
# Debian's chromium and detectron2.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where torch is already installed (Colab, a laptop) pass TORCH_SPEC= to keep it.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# the kit: what `make demo` (and a user) runs
STAMP := $(VENV)/.installed
# the test and benchmark tools on top of it (requirements-dev.txt: pytest, openvino, onnxruntime, playwright...)
DEV_STAMP := $(VENV)/.installed-dev
# Debian's chromium for the web page's browser test (root, or sudo)
BROWSER_STAMP := $(VENV)/.browser
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# detectron2 for its engine's tests: the offline, Python-only install (scripts/install_detectron2.py)
D2_STAMP := $(VENV)/.detectron2
DEMO_DIR ?= outputs/demo
# extra flags for the demo training, e.g. DEMO_TRAIN_ARGS="--max-iter 20" for a quick look
DEMO_TRAIN_ARGS ?=
# the demo ends by serving its model until Ctrl+C (DEMO_SERVE=0: stop after evaluation);
# extra server flags, e.g. DEMO_SERVE_ARGS="--port 8000" or "--use-ngrok"
DEMO_SERVE ?= 1
DEMO_SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv demo test bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install --quiet $(TORCH_SPEC))
	$(PY) -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# the environment the tests run in (the kit and its test tools)
venv: $(DEV_STAMP)

# the browser test drives Debian's chromium through Playwright (never `playwright install`)
$(BROWSER_STAMP): | $(DEV_STAMP)
	command -v chromium >/dev/null || ($(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	touch $@

$(D2_STAMP): $(STAMP) scripts/install_detectron2.py maskrcnn_finetune/modeling/detectron2/install.py
	$(PY) scripts/install_detectron2.py --source wheel
	touch $@

demo: $(STAMP)
	$(PY) scripts/make_synthetic.py $(DEMO_DIR)/labelme --images 100 --seed 0
	$(PY) scripts/labelme_to_coco.py $(DEMO_DIR)/labelme $(DEMO_DIR)/coco \
		--val-fraction 0.2 --seed 0 --preview $(DEMO_DIR)/coco/samples.png
	$(PY) scripts/train.py --preset demo --resume --train-json $(DEMO_DIR)/coco/train.json \
		--val-json $(DEMO_DIR)/coco/val.json --output-dir $(DEMO_DIR)/model $(DEMO_TRAIN_ARGS)
	$(PY) scripts/evaluate.py --model-dir $(DEMO_DIR)/model --json $(DEMO_DIR)/coco/val.json
ifeq ($(DEMO_SERVE),1)
	@echo "Serving the demo model: open the URL below in a browser; Ctrl+C stops it"
	$(PY) rest_api_flask/flask_app.py --model-dir $(DEMO_DIR)/model --upload-folder $(DEMO_DIR)/uploads \
		--output-folder $(DEMO_DIR)/served --infer-with-cpu $(DEMO_SERVE_ARGS)
endif

test: $(DEV_STAMP) $(BROWSER_STAMP) $(D2_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# the speed figures of benchmarks/RESULTS.md (about 30 minutes; run it with nothing else busy):
# CPU latency per backbone against eager fp32, detectron2 and the floor, parity on the demo
# model, the kit against ONNX Runtime and OpenVINO (timed alternately, parity on the same weights), and the server under load serving the demo model at an 800 px short side
bench: $(DEV_STAMP) $(D2_STAMP)
	test -f $(DEMO_DIR)/model/model_final.pth || $(MAKE) demo DEMO_SERVE=0
	$(PY) benchmarks/cpu_inference.py --parity $(DEMO_DIR)/model:$(DEMO_DIR)/coco/val.json
	$(PY) benchmarks/runtime_peers.py --demo-dir $(DEMO_DIR)/model --rounds 5
	$(PY) benchmarks/server_load.py --model-dir $(DEMO_DIR)/model --model-input 800 --size 800 \
		--out outputs/bench/server_load.json
	$(PY) benchmarks/predict_speed.py --model-dir $(DEMO_DIR)/model --images $(DEMO_DIR)/coco/val.json

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
