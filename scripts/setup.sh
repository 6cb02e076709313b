#!/usr/bin/env bash
# Create .venv at the repository root and install gptlab into it.
#   scripts/setup.sh          the library and the command-line tool
#   scripts/setup.sh --dev    plus the test and benchmark references (pytest, tiktoken, transformers, ...)
# torch is pinned and installed first: 2.13.0 is a CPU build that pip takes from local disk; an
# unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${GPTLAB_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
if [ "${1:-}" = "--dev" ]; then
    .venv/bin/python -m pip install -q -e ".[dev]"
    # The chat page's browser test drives the system Chromium (Playwright cannot download its own here).
    if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "setup: could not install chromium; the chat page's browser test will be skipped" >&2
    fi
else
    .venv/bin/python -m pip install -q -e .
fi
echo "gptlab installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
