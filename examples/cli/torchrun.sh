#!/usr/bin/env bash
# Launch `usod fit` (or validate/test/predict) with torchrun, on one node or several.
#
# One node, every GPU (default: as many processes as `nvidia-smi -L` lists GPUs):
#   bash examples/cli/torchrun.sh
# One node, 4 GPUs, another experiment, extra `usod fit` arguments after the script name:
#   NPROC_PER_NODE=4 EXPERIMENT=configs/experiment/sdg_synth.yaml bash examples/cli/torchrun.sh --seed_everything 1
# Two nodes with 4 GPUs each: run on every node, NODE_RANK 0 on the node whose address is MASTER_ADDR:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node001 NPROC_PER_NODE=4 bash examples/cli/torchrun.sh   # on node001
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node001 NPROC_PER_NODE=4 bash examples/cli/torchrun.sh   # on node002
# CPU processes instead of GPUs (gloo), e.g. to try a config on a laptop or a CPU cluster:
#   NPROC_PER_NODE=2 TRAINER_CONFIG=configs/trainer/ddp_cpu.yaml bash examples/cli/torchrun.sh
# The whole A2S pipeline (`usod pipeline`: both stages, labels, report) instead of one `usod fit`:
#   SUBCOMMAND=pipeline PIPELINE=configs/pipeline/a2s_duts.yaml bash examples/cli/torchrun.sh --out runs/a2s
#
# Lightning takes the ranks from torchrun; --trainer.num_nodes and --trainer.devices (pipeline: --num-nodes
# and --devices) are set to match.
# Keep data, checkpoints and pseudo-label stores on a filesystem every node sees.

set -euo pipefail

SUBCOMMAND="${SUBCOMMAND:-fit}"
EXPERIMENT="${EXPERIMENT:-configs/experiment/a2s_stage1_synth.yaml}"
PIPELINE="${PIPELINE:-configs/pipeline/a2s_synth.yaml}"
TRAINER_CONFIG="${TRAINER_CONFIG:-configs/trainer/ddp.yaml}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  NPROC_PER_NODE="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)"
  [[ "$NPROC_PER_NODE" -gt 0 ]] || NPROC_PER_NODE=1
fi
# TORCHRUN may hold a command with arguments, e.g. "python -m torch.distributed.run"
read -r -a TORCHRUN_CMD <<< "${TORCHRUN:-torchrun}"

if [[ "$SUBCOMMAND" == pipeline ]]; then
  USOD_ARGS=(pipeline --config "$PIPELINE" --num-nodes "$NNODES" --devices "$NPROC_PER_NODE")
else
  USOD_ARGS=("$SUBCOMMAND" --config "$EXPERIMENT" --config "$TRAINER_CONFIG"
             --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC_PER_NODE")
fi

exec "${TORCHRUN_CMD[@]}" \
  --nnodes "$NNODES" \
  --nproc-per-node "$NPROC_PER_NODE" \
  --node-rank "$NODE_RANK" \
  --master-addr "$MASTER_ADDR" \
  --master-port "$MASTER_PORT" \
  -m usod.cli "${USOD_ARGS[@]}" \
  "$@"
