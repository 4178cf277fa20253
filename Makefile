# Two commands do all the setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export DEMO_SECONDS

.PHONY: demo test unit integration faults install kafka tools dashboard bench clean

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

# Prometheus, promtool, Alertmanager and amtool for the rule and live monitoring tests
# (apt-get install only when one is missing).
tools:
	sh deploy/install-tools.sh

# The Grafana dashboard is generated: edit deploy/grafana/dashboard.py, then run this.
dashboard: $(STAMP)
	$(BIN)/python deploy/grafana/dashboard.py

demo: kafka
	$(BIN)/monitor demo

test: kafka tools
	$(BIN)/python -m pytest -q

unit: $(STAMP) tools
	$(BIN)/python -m pytest -q tests/unit

integration: kafka tools
	$(BIN)/python -m pytest -q tests/integration

# The fault suite at length: more kill -9 trials on longer fill bursts than `make test` runs.
faults: kafka
	MONITOR_FAULT_TRIALS=$${MONITOR_FAULT_TRIALS:-10} MONITOR_FAULT_FILLS=$${MONITOR_FAULT_FILLS:-2000} \
		MONITOR_FAULT_STRICT_HANDOVER=1 \
		$(BIN)/python -m pytest -q tests/integration/test_faults.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .monitor-data .demo
