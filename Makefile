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
# the file the benchmarks write their sections into; each block names the make target that ran it
RESULTS_MD ?= benchmarks/RESULTS.md
BENCH_MD = --results-md $(RESULTS_MD)
BENCH_PY = RESULTS_MD_MAKE_TARGET=$@ $(PY)

.PHONY: venv demo test bench bench-recipe bench-memory bench-clone clean

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

# The figures of benchmarks/RESULTS.md: each step writes its own sections there, between their markers
# (RESULTS_MD=other.md writes elsewhere). Run them with nothing else busy: they are timings.
# make bench (about an hour; trains the demo model first if it is missing): model size and cost, CPU
# latency per backbone with where the speed comes from and parity on the demo model, the kit against
# ONNX Runtime and OpenVINO (the demo model, the same at 800 px, ResNet-50-FPN at 800 px), the server
# under load (one worker, --workers, --micro-batch) and batch prediction's images per second
bench: $(DEV_STAMP) $(D2_STAMP)
	test -f $(DEMO_DIR)/model/model_final.pth || $(MAKE) demo DEMO_SERVE=0
	$(BENCH_PY) benchmarks/backbone_complexity.py --short-side 800 $(BENCH_MD)
	$(BENCH_PY) benchmarks/cpu_inference.py --parity $(DEMO_DIR)/model:$(DEMO_DIR)/coco/val.json \
		--plot benchmarks/cpu_latency.png $(BENCH_MD)
	$(BENCH_PY) benchmarks/runtime_peers.py --cases demo --demo-dir $(DEMO_DIR)/model --rounds 5 $(BENCH_MD)
	$(BENCH_PY) benchmarks/runtime_peers.py --cases trained --trained-dir $(DEMO_DIR)/model --trained-size 800 \
		--trained-images 12 --rounds 3 $(BENCH_MD)
	$(BENCH_PY) benchmarks/runtime_peers.py --cases r50-800 --rounds 5 $(BENCH_MD)
	$(BENCH_PY) benchmarks/server_load.py --model-dir $(DEMO_DIR)/model --model-input 800 --size 800 \
		--out outputs/bench/server_load.json $(BENCH_MD)
	$(BENCH_PY) benchmarks/server_load.py --model-dir $(DEMO_DIR)/model --model-input 800 --size 800 \
		--workers 1 2 --requests-per-level 32 --memory-requests 200 --out outputs/bench/server_workers.json $(BENCH_MD)
	$(BENCH_PY) benchmarks/server_load.py --model-dir $(DEMO_DIR)/model --model-input 800 --size 800 \
		--micro-batch 1 4 --requests-per-level 32 --memory-requests 0 --out outputs/bench/server_micro_batch.json $(BENCH_MD)
	$(BENCH_PY) benchmarks/predict_speed.py --model-dir $(DEMO_DIR)/model --images $(DEMO_DIR)/coco/val.json $(BENCH_MD)

# make bench-recipe (about half an hour): the demo recipe timed and scored on its three data sets,
# then the training step's speed lever by lever
bench-recipe: $(STAMP)
	$(BENCH_PY) benchmarks/demo_recipe.py --cases demo wide two_classes $(BENCH_MD)
	$(BENCH_PY) benchmarks/train_speed.py --iters 25 --warmup 5 --rounds 2 $(BENCH_MD)

# make bench-memory (about half an hour): batch prediction's memory over 10,000 images of the demo model
bench-memory: $(STAMP)
	test -f $(DEMO_DIR)/model/model_final.pth || $(MAKE) demo DEMO_SERVE=0
	$(BENCH_PY) benchmarks/predict_speed.py --model-dir $(DEMO_DIR)/model --images $(DEMO_DIR)/coco/val.json \
		--skip-speed --memory-count 10000 $(BENCH_MD)

# make bench-clone (as long as the two commands themselves): the README's make demo and make test in a
# fresh clone of the committed HEAD, each timed (commit first: the clone holds what is committed)
bench-clone: $(STAMP)
	$(BENCH_PY) benchmarks/fresh_clone.py $(BENCH_MD)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
