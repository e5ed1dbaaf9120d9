#!/bin/sh
# Run a command inside the project's Apptainer image when CHATSPACE_IMAGE names one, else as
# is. The one place that builds the `apptainer exec` line: submitit jobs (--container) and the
# sbatch templates in hpc/ (via containers/run.sh) both go through it.
#   CHATSPACE_IMAGE  path to the .sif image (unset: run on the host)
#   CHATSPACE_ROOT   workspace root to bind (default /workspace)
#   HF_HOME          HF cache to bind (default ~/.cache/huggingface)
# Both are exported, so the command inside sees the paths that are bound (the image's own
# defaults would point elsewhere). The line is printed to stderr, so task logs show it.
set -eu
if [ -z "${CHATSPACE_IMAGE:-}" ]; then
    exec "$@"
fi
[ -f "$CHATSPACE_IMAGE" ] || { echo "chatspace: image not found: $CHATSPACE_IMAGE" >&2; exit 2; }
CHATSPACE_ROOT=${CHATSPACE_ROOT:-/workspace}
HF_HOME=${HF_HOME:-$HOME/.cache/huggingface}
export CHATSPACE_ROOT HF_HOME
mkdir -p "$HF_HOME"
set -- apptainer exec --nv --bind "$CHATSPACE_ROOT" --bind "$HF_HOME" "$CHATSPACE_IMAGE" "$@"
echo "chatspace: $*" >&2
exec "$@"
