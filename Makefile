# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DEMO_SECONDS

.PHONY: demo test unit integration install kafka bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

install: $(STAMP)

# Fetch Apache Kafka's jars with Maven into the cache (a no-op when already there).
kafka: $(STAMP)
	$(BIN)/python -c 'from monitor.ops.broker import kafka_lib_dir; print(kafka_lib_dir())'

demo: kafka
	$(BIN)/monitor demo

test: kafka
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: kafka
	$(BIN)/python -m pytest -q tests/integration

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .monitor-data .demo
