#!/usr/bin/env bash
# Run the whole test suite (the README's test command, `make test`, calls this).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
python -m pytest -q "$@"
