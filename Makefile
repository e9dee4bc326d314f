# Two commands matter: `make demo` and `make test` (README). Both install what is missing.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Never replace an existing torch; on a fresh machine take the CPU build that lies on disk.
TORCH_PIN ?= torch==2.13.0

.PHONY: install test demo demo-loss bench

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_PIN)"
	@$(PYTHON) -c "import vaopd_kernels, pytest, hypothesis, triton" 2>/dev/null \
		|| $(PIP) install -q -e ".[dev,triton]"

test: install
	$(PYTHON) -m pytest tests -q

demo: demo-loss

demo-loss: install
	$(PYTHON) examples/loss_demo.py
