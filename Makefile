# ttsr developer entry points.
#   make venv   - create .venv and install torch (CPU) + requirements (cached)
#   make test   - run the test suite  (PYTEST_ARGS="-k foo -x" to pass args)
#   make demo   - run demo.py (BasicSR vs NeuralSR with the shipped model, CPU)
#   make study  - the distillation study (experiments/distill.py; GPU machine, < 9 min)
#   make study-cpu - its CPU-sized variant (~75 s, a DAgger round included; numbers meaningless)
#   make bench  - run bench/bench_basic_sr.py
#   make clean  - remove .venv and caches (never datasets/ or checkpoints/)

PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
PYTEST_ARGS ?=
VENV        ?= .venv
# Extra flags for every pip install (e.g. --no-cache-dir).
PIP_FLAGS   ?=

VENV_PY := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PIP     := $(VENV_PY) -m pip install $(PIP_FLAGS)

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv test demo bench study study-cpu clean

venv: $(STAMP)

# The stamp is only written after every install step succeeded, so a failed
# install is retried on the next `make`; editing a requirements file reinstalls.
$(STAMP): requirements.txt requirements-extra.txt
	test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -r requirements.txt
	$(PIP) -r requirements-extra.txt
	touch $@

test: venv
	$(VENV_PY) -m pytest -q tests $(PYTEST_ARGS)

demo: venv
	$(VENV_PY) demo.py

bench: venv
	$(VENV_PY) bench/bench_basic_sr.py

# The GPU machine's own python3 has torch and the rest: .venv is used only where it exists.
STUDY_PY ?= $(shell test -x $(VENV_PY) && echo $(VENV_PY) || echo $(PYTHON))
study:
	$(STUDY_PY) experiments/distill.py --config experiments/distill-h100.json

study-cpu: venv
	$(VENV_PY) experiments/distill.py --config experiments/distill-cpu.json

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
	find . \( -path ./.git -o -path ./datasets -o -path ./checkpoints \) -prune -o \
		-type d \( -name __pycache__ -o -name .pytest_cache -o -name '*.egg-info' \) \
		-exec rm -rf {} +
	find . \( -path ./.git -o -path ./datasets -o -path ./checkpoints \) -prune -o \
		-type f -name '*.py[co]' -exec rm -f {} +
