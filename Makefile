# Quick start: `make demo` (set up + verify the bundled example), `make test` (set up + run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench-sat clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: install
	$(BIN)/genbab verify specs/toy_mlp.onnx specs/toy_mlp_unsafe.vnnlib --timeout 30
	$(BIN)/genbab verify specs/toy_mlp.onnx specs/toy_mlp_robust.vnnlib --timeout 10

test: install
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

bench-sat: install
	$(BIN)/python benchmarks/falsify_known_sat.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
