# runwire: `make demo` runs the embedded demo, `make test` the whole suite, on a fresh clone.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
PYTEST_ARGS ?=
PIP_QUIET ?= -q
# The web UI's front end: npm packages from the lockfile, bundled by esbuild into the package.
UI_BUNDLE := storage/ui/static/app.js
UI_SOURCES := $(wildcard storage/ui/frontend/src/*) storage/ui/frontend/index.html \
	storage/ui/frontend/package-lock.json storage/ui/frontend/build.mjs

.PHONY: install ui-assets kafka-jars chromium lint-imports fuzz test test-unit demo up proto bench bench-emitter bench-e2e bench-query bench-alerts bench-streams bench-artifacts bench-mlflow bench-ui clean

# setuptools' strict editable mode lays the package out as installed, a tree of links under
# build/__editable__*, which import-linter can walk (the default mode's import hook hides the
# mapped folders from it). A module added or removed needs the tree relinked: PACKAGE_FILES lists
# the package's files (the UI bundle is built before the install) and changes only when that list
# does, which reruns the install.
# PYTHONWARNINGS: setuptools' boxed notes about editable installs say what README.md says.
EDITABLE := --config-settings editable_mode=strict -e
PIP_EDITABLE := PYTHONWARNINGS=ignore $(PYTHON) -m pip install
PACKAGE_FILES := build/package-files.txt
$(shell mkdir -p build && find emitter proto ingest storage deploy \( -name __pycache__ -o -path storage/ui/frontend \
	-o -path storage/ui/static \) -prune \
	-o -type f -print | LC_ALL=C sort > $(PACKAGE_FILES).new && \
	{ cmp -s $(PACKAGE_FILES).new $(PACKAGE_FILES) && rm $(PACKAGE_FILES).new || mv $(PACKAGE_FILES).new $(PACKAGE_FILES); })

$(STAMP): pyproject.toml $(PACKAGE_FILES) $(UI_BUNDLE)
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install $(PIP_QUIET) --upgrade pip
	$(PIP_EDITABLE) $(PIP_QUIET) $(EDITABLE) ".[server,dev]"
	touch $(STAMP)

$(UI_BUNDLE): $(UI_SOURCES)
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
	cd storage/ui/frontend && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent

ui-assets: $(UI_BUNDLE)

install: $(STAMP)

# The peers we compare against (wandb, MLflow) only for benchmarks.
$(BENCH_STAMP): $(STAMP)
	$(PIP_EDITABLE) -q $(EDITABLE) ".[server,dev,bench]"
	touch $(BENCH_STAMP)

# Apache Kafka's jars from Maven Central into ~/.cache/runwire (reused by later runs).
kafka-jars: install
	$(PYTHON) -m runwire.deploy.local.kafka --resolve-only

# Headless Chromium renders the HTML report in the tests (Debian's package; CI runs as root).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: install kafka-jars chromium lint-imports
	mkdir -p build
	RUNWIRE_REQUIRE_INFRA=1 $(PYTHON) -m pytest tests -ra --junitxml=build/test-results.xml $(PYTEST_ARGS)

# The layering contracts (pyproject.toml [tool.importlinter]).
lint-imports: install
	$(VENV)/bin/lint-imports

# The property-based tests and the fuzzing of every entry point (gRPC, HTTP, Kafka topics),
# with many more examples than `make test` runs.
fuzz: install kafka-jars
	HYPOTHESIS_PROFILE=long RUNWIRE_REQUIRE_INFRA=1 $(PYTHON) -m pytest tests/unit/test_properties.py \
		tests/unit/test_gateway_fuzz.py tests/integration/test_fuzz_http.py tests/integration/test_fuzz_kafka.py \
		-ra $(PYTEST_ARGS)

test-unit: install
	$(PYTHON) -m pytest tests/unit -ra $(PYTEST_ARGS)

# The demo shows pip's progress (a first install takes minutes) and leaves its run in the local store.
demo: PIP_QUIET := --progress-bar on
demo: install
	$(VENV)/bin/runwire demo

up: install
	$(VENV)/bin/runwire up

proto: install
	PYTHON=$(PYTHON) scripts/gen_proto.sh

bench: bench-emitter bench-e2e bench-query bench-alerts bench-streams bench-artifacts bench-mlflow bench-ui

bench-emitter: $(BENCH_STAMP)
	mkdir -p build/bench
	$(PYTHON) bench/emitter.py --out build/bench/emitter.json

bench-e2e: $(BENCH_STAMP) kafka-jars
	mkdir -p build/bench
	$(PYTHON) bench/e2e.py --out build/bench/e2e.json

bench-query: $(BENCH_STAMP)
	mkdir -p build/bench
	$(PYTHON) bench/query.py --out build/bench/query.json

bench-alerts: $(BENCH_STAMP) kafka-jars
	mkdir -p build/bench
	$(PYTHON) bench/alerts.py --out build/bench/alerts.json

bench-streams: $(BENCH_STAMP) kafka-jars
	mkdir -p build/bench
	$(PYTHON) bench/streams.py --out build/bench/streams.json

bench-artifacts: $(BENCH_STAMP)
	mkdir -p build/bench
	$(PYTHON) bench/artifacts.py --out build/bench/artifacts.json

bench-mlflow: $(BENCH_STAMP) kafka-jars
	mkdir -p build/bench
	$(PYTHON) bench/mlflow_compat.py --out build/bench/mlflow.json

bench-ui: $(BENCH_STAMP) $(UI_BUNDLE) chromium
	mkdir -p build/bench
	$(PYTHON) bench/ui.py --out build/bench/ui.json

clean:
	rm -rf build $(VENV)
