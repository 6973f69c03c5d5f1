#!/usr/bin/env bash
# Create or refresh .venv: the CPU build of torch, then this package and its
# test tools. Idempotent: does nothing when nothing it installs has changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
# The browser tests drive Debian's Chromium (never a browser downloaded by a test tool).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium (browser tests) ..." >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "the browser tests need Chromium: apt-get install chromium" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.playground-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setting up .venv (first time, or the requirements changed) ..." >&2
# torch first, pinned: the range in pyproject.toml (what users elsewhere
# get) is then already met, and pip does not fetch a multi-GB CUDA build.
# On Linux, PyPI's torch is the CUDA build: take the CPU one ("+cpu") from
# PyTorch's CPU index (a wheel folder pip is configured with serves as well).
# Elsewhere (macOS) PyPI's torch is the CPU build.
if [ "$(uname -s)" = Linux ]; then
    .venv/bin/pip install -q --disable-pip-version-check --retries 1 \
        --extra-index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}+cpu"
else
    .venv/bin/pip install -q --disable-pip-version-check "torch==${TORCH_VERSION}"
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
echo "$want" > "$stamp"
