# make run   — set up .venv (CPU torch 2.13.0, edgeship, ONNX Runtime, OpenVINO and TFLite), install the Debian
#              Fashion-MNIST package when possible, and run the default recipe.
# make test  — set up .venv and run the test suite.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: run test setup data clean

run: setup data
	$(VENV)/bin/edgeship run recipes/default.yaml

test: setup data
	$(PY) -m pytest -q

setup: $(STAMP)

# torch==2.13.0 is pinned here: it is the CPU build; an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" -e ".[dev,openvino,tflite,tensorrt-onnx]"
	touch $(STAMP)

# Best effort: without the package edgeship falls back to scikit-learn's digits and says so.
data:
	@if [ ! -d $(FMNIST) ]; then \
		($(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 ($(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
		|| echo "note: could not install dataset-fashion-mnist (needs apt and root); edgeship will use scikit-learn's digits"; \
	fi

clean:
	rm -rf $(VENV) .edgeship reports/*/
