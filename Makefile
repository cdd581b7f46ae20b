# One entry point for every set-up step. `make test` and `make demo` work on a fresh Debian
# machine with Python 3.11+: they create what is missing and skip what is already there.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TRITON_VENV := .venv-triton
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROTO_OUT := sidecar/_proto

.PHONY: test demo demo-rollout lint bench bench-quick models proto deps redis-server prometheus triton-venv gbstats-venv flagd-legacy-venv confidence-venv nginx chromium clean

# The editable install's build step (setup.py) also generates $(PROTO_OUT) from proto/.
$(VENV)/.installed: pyproject.toml setup.py
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(PROTO_OUT)/.generated $@

# Generated gRPC/protobuf modules come from proto/ (tools/gen_proto.py, the same code the build
# step runs); never edit them by hand. This target only regenerates after a .proto edit, without a
# reinstall.
$(PROTO_OUT)/.generated: $(VENV)/.installed $(wildcard proto/trafficsplit/v1/*.proto) tools/gen_proto.py
	$(PY) tools/gen_proto.py
	@touch $@

proto: $(PROTO_OUT)/.generated

deps: $(VENV)/.installed proto

# Debian's redis-server, for the integration tests (they start their own on a free port), and
# openssl, which makes the throw-away certificates of the TLS test.
redis-server:
	@command -v redis-server >/dev/null && command -v openssl >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq redis-server openssl >/dev/null; }
	@command -v redis-server >/dev/null

# Debian's prometheus (server and promtool): the rule checks and the real-Prometheus test
# (deploy/prometheus, tests/e2e/test_prometheus.py). Without recommends: no exporters. On a host
# that runs systemd the package also starts its own service on :9090 (the tests never use it; they
# start theirs on a free loopback port): `systemctl disable --now prometheus` if you do not want it.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v promtool >/dev/null

# Triton's server binary ships in the nvidia-pytriton wheel; it pins numpy<2, so it gets its own
# virtualenv rather than constraining the project's.
$(TRITON_VENV)/.installed:
	@[ -x $(TRITON_VENV)/bin/python ] || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q 'nvidia-pytriton==0.7.0' onnxruntime 'numpy<2'
	@touch $@

triton-venv: $(TRITON_VENV)/.installed

# The reference statistics engines the experiments tests and bench compare against: gbstats pins
# numpy<2 and pandas<2, spotify-confidence pulls chartify and bokeh; neither constrains the project.
GBSTATS_VENV := .venv-gbstats
CONFIDENCE_VENV := .venv-confidence
$(GBSTATS_VENV)/.installed:
	@[ -x $(GBSTATS_VENV)/bin/python ] || $(PYTHON) -m venv $(GBSTATS_VENV)
	$(GBSTATS_VENV)/bin/python -m pip install -q 'gbstats==0.8.0'
	@touch $@

$(CONFIDENCE_VENV)/.installed:
	@[ -x $(CONFIDENCE_VENV)/bin/python ] || $(PYTHON) -m venv $(CONFIDENCE_VENV)
	$(CONFIDENCE_VENV)/bin/python -m pip install -q 'spotify-confidence==4.1.0'
	@touch $@

# flagd's pre-v3 fractional (the string flagKey + targetingKey), the reference for legacy hashing:
# openfeature-flagd-core 1.0.0 shares its module path with the 2.0.0 in the project's venv.
FLAGD_LEGACY_VENV := .venv-flagd-legacy
$(FLAGD_LEGACY_VENV)/.installed:
	@[ -x $(FLAGD_LEGACY_VENV)/bin/python ] || $(PYTHON) -m venv $(FLAGD_LEGACY_VENV)
	$(FLAGD_LEGACY_VENV)/bin/python -m pip install -q 'openfeature-flagd-core==1.0.0'
	@touch $@

flagd-legacy-venv: $(FLAGD_LEGACY_VENV)/.installed
gbstats-venv: $(GBSTATS_VENV)/.installed
confidence-venv: $(CONFIDENCE_VENV)/.installed

# Debian's nginx, the bench's reference proxy (the suite runs its own copy on a free loopback port).
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends nginx >/dev/null; }

# Debian's chromium: the report test renders `flagctl report --html` in a real headless browser.
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

test: deps redis-server prometheus triton-venv gbstats-venv flagd-legacy-venv chromium
	$(PY) -m pytest -q -p no:cacheprovider

demo: deps
	$(PY) -m sidecar.demo $(ARGS)

# A healthy candidate ramped and promoted, then a broken one rolled back (docs/rollouts.md).
demo-rollout: deps redis-server triton-venv
	$(PY) -m bench.rollout --demo

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: deps redis-server triton-venv gbstats-venv confidence-venv nginx
	$(PY) -m bench $(ARGS)

bench-quick: deps redis-server triton-venv gbstats-venv confidence-venv nginx
	$(PY) -m bench --quick $(ARGS)

models: deps
	$(PY) tools/build_models.py

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(GBSTATS_VENV) $(CONFIDENCE_VENV) $(PROTO_OUT) sidecar/_bundled build dist *.egg-info \
	  .pytest_cache .mypy_cache .ruff_cache
