#!/bin/sh
# Install Prometheus (prometheus, promtool) and Alertmanager (alertmanager, amtool) when any is
# missing: the rule tests and the live Prometheus/Alertmanager tests run the real programs.
# Idempotent: does nothing when all four are on PATH. Uses the distribution's packages
# (Debian/Ubuntu: `prometheus`, `prometheus-alertmanager`, whose Alertmanager binary is
# `prometheus-alertmanager`); needs root or sudo for apt-get.
set -eu

have() { command -v "$1" >/dev/null 2>&1; }

if have prometheus && have promtool && have amtool && { have alertmanager || have prometheus-alertmanager; }; then
    exit 0
fi

if ! have apt-get; then
    echo "install-tools: prometheus, promtool, alertmanager and amtool are needed on PATH;" >&2
    echo "  no apt-get here: install Prometheus and Alertmanager from https://prometheus.io/download/" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if have sudo; then SUDO="sudo"; else
        echo "install-tools: run as root (or install sudo) to apt-get install prometheus prometheus-alertmanager" >&2
        exit 1
    fi
fi

echo "install-tools: apt-get install prometheus prometheus-alertmanager" >&2
$SUDO apt-get update -q
# Where systemd runs, the packages also enable their own services (ports 9090, 9093); the tests
# do not use them: they start their own on free loopback ports.
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=300 prometheus prometheus-alertmanager
