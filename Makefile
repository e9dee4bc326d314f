# Two commands matter: `make demo` and `make test` (README). Both install what is missing.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Never replace an existing torch; on a fresh machine take the CPU build that lies on disk.
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= dev,triton,train,bench,deepspeed,trl,peft
# Installed once; reinstalled when pyproject.toml changes.
STAMP := .install.stamp

.PHONY: install test demo demo-loss bench reproduce

$(STAMP): pyproject.toml setup.py
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

test: install
	$(PYTHON) -m pytest tests -q

# OPD and VA-OPD side by side on the CPU: the shipped tiny teacher and partially sighted student
# (experiments/assets) on the fine-detail task, held-out accuracy with 95% intervals (runs/demo/).
demo: install
	$(PYTHON) -m experiments.demo

# The loss alone at the real Qwen3-VL vocabulary, torch backend vs the full-logit reference.
demo-loss: install
	$(PYTHON) examples/loss_demo.py

# The CPU benchmark preset: every implementation side by side (bench/results/<machine>/).
bench: install
	$(PYTHON) -m bench.compare --preset cpu-small

# OPD vs VA-OPD (+ ablations) on the fine-detail task: 24 runs, 6 seeds per main arm, on the CPU
# (19.4 min on 2 cores last time): writes docs/reproduction.md.
reproduce: install
	$(PYTHON) -m experiments.code_reproduce
