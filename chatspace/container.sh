#!/bin/sh
# Run a command inside the project's Apptainer image when CHATSPACE_IMAGE names one, else as
# is. The one place that builds the `apptainer exec` line: submitit jobs (--container) and the
# sbatch templates in hpc/ (via containers/run.sh) both go through it.
#   CHATSPACE_IMAGE  path to the .sif image (unset: run on the host)
#   CHATSPACE_ROOT   workspace root to bind (default /workspace)
#   HF_HOME          HF cache to bind (default ~/.cache/huggingface)
set -eu
if [ -z "${CHATSPACE_IMAGE:-}" ]; then
    exec "$@"
fi
root=${CHATSPACE_ROOT:-/workspace}
hf_home=${HF_HOME:-$HOME/.cache/huggingface}
mkdir -p "$hf_home"
exec apptainer exec --nv --bind "$root" --bind "$hf_home" "$CHATSPACE_IMAGE" "$@"
