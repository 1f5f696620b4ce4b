#!/usr/bin/env bash
# Distributed training on one or more nodes with torchrun (torch.distributed.run, through brs_detr.apis.dist_launch:
# a failing rank ends the job with its own one-line error and exit status).
#
# Usage: bash tools/dist_train.sh CONFIG GPUS [train.py args ...]
#   GPUS: processes per node (one per GPU; on a machine without CUDA, CPU processes that talk over gloo).
# Environment (defaults): NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), PORT (29500),
#   PYTHON (python): the interpreter of the environment brs-detr is installed in.
set -euo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: bash $0 CONFIG GPUS [train.py args ...]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
if [ ! -f "$CONFIG" ]; then
  echo "$(basename "$0"): error: config file not found: $CONFIG" >&2
  exit 2
fi
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
  "$TOOLS_DIR/train.py" \
  "$CONFIG" \
  --launcher pytorch "$@"
