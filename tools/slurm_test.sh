#!/usr/bin/env bash
# Testing on a Slurm cluster with srun (one task per GPU).
#
# Usage: [GPUS=8] bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args ...]
# Environment (defaults): GPUS (8) total tasks, GPUS_PER_NODE (min(GPUS, 8)), CPUS_PER_TASK (5),
#   SRUN_ARGS (empty) extra srun arguments, PYTHON (python), MASTER_PORT (29500, read by the slurm launcher).
set -euo pipefail

if [ "$#" -lt 4 ]; then
  echo "usage: bash $0 PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args ...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
shift 4
if [ ! -f "$CONFIG" ]; then
  echo "$(basename "$0"): error: config file not found: $CONFIG" >&2
  exit 2
fi
case "$CHECKPOINT" in
  *://*) ;;
  *) if [ ! -f "$CHECKPOINT" ]; then
       echo "$(basename "$0"): error: checkpoint file not found: $CHECKPOINT" >&2
       exit 2
     fi ;;
esac
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# shellcheck disable=SC2086  # SRUN_ARGS is split on purpose
PYTHONPATH="$TOOLS_DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
  --job-name="$JOB_NAME" \
  --gres=gpu:"$GPUS_PER_NODE" \
  --ntasks="$GPUS" \
  --ntasks-per-node="$GPUS_PER_NODE" \
  --cpus-per-task="$CPUS_PER_TASK" \
  --kill-on-bad-exit=1 \
  $SRUN_ARGS \
  "$PYTHON" -u "$TOOLS_DIR/test.py" "$CONFIG" "$CHECKPOINT" --launcher slurm "$@"
