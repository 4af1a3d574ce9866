# Set-up and everyday commands. `make demo` and `make test` create or refresh .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/real-ad
OUT ?= demo-output
# CPU threads for `make demo` (e.g. THREADS=1 on a shared machine); empty: tailedcore's default.
THREADS ?=
# torch is pinned in the same install command as everything else, so no dependency
# can pull a different (CUDA) build.
INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[lite,serve,test,ray,onnx,openvino]"

.PHONY: install demo test clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(INSTALL)
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/tailedcore $(if $(THREADS),--threads $(THREADS)) demo --data "$(DATA)" --out "$(OUT)"

test: $(BIN)/.installed
	scripts/ensure-chromium
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
