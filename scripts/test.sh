#!/usr/bin/env bash
# Run the whole test suite (the README's test command, `make test`, calls this).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
# Two workers: most tests wait on subprocesses, daemons or imports on one core. Tests that
# start vLLM engines share one worker (tests/conftest.py, --dist loadgroup); the Apptainer
# test image builds in the background from collection and its tests run last.
python -m pytest -q -n "${CHATSPACE_TEST_WORKERS:-2}" --dist loadgroup "$@"
