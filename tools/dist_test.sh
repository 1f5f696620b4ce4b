#!/usr/bin/env bash
# Distributed testing on one or more nodes with torchrun (torch.distributed.run, through brs_detr.apis.dist_launch:
# a failing rank ends the job with its own one-line error and exit status).
#
# Usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args ...]
#   GPUS: processes per node (one per GPU; on a machine without CUDA, CPU processes that talk over gloo).
# Environment (defaults): NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500),
#   PYTHON (python): the interpreter of the environment brs-detr is installed in.
set -euo pipefail

if [ "$#" -lt 3 ]; then
  echo "usage: bash $0 CONFIG CHECKPOINT GPUS [test.py args ...]" >&2
  exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
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
case "$GPUS" in
  ''|*[!0-9]*|0) echo "$(basename "$0"): error: GPUS must be a positive integer, got '$GPUS'" >&2; exit 2 ;;
esac

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python}
TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

PYTHONPATH="$TOOLS_DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" -m brs_detr.apis.dist_launch \
  --nnodes="$NNODES" \
  --node_rank="$NODE_RANK" \
  --master_addr="$MASTER_ADDR" \
  --nproc_per_node="$GPUS" \
  --master_port="$PORT" \
  "$TOOLS_DIR/test.py" \
  "$CONFIG" \
  "$CHECKPOINT" \
  --launcher pytorch "$@"
