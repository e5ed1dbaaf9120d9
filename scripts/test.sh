#!/usr/bin/env bash
# Run the whole test suite (the README's test command, `make test`, calls this).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
# Two workers (--dist load): most tests wait on subprocesses, daemons or imports on one core.
# The workers share the dev SLURM cluster and the Apptainer test image, which builds in the
# background from collection (tests/conftest.py); its tests run last. Tests that look at
# /dev/shm count only their own engine's segments. (--dist loadgroup, to keep the vLLM tests
# on one worker, does not work here: pytest-xdist 3.8 cannot name groups in pytest 9's ids.)
python -m pytest -q -n "${CHATSPACE_TEST_WORKERS:-2}" --dist load "$@"
