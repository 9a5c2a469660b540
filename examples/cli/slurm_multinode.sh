#!/usr/bin/env bash
# Multi-node, multi-GPU training with the usod CLI under SLURM: one task per GPU, Lightning reads the ranks
# (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID) and the master address from SLURM.
#
#   sbatch examples/cli/slurm_multinode.sh                                   # the default experiment below
#   EXPERIMENT=configs/experiment/a2s_stage2_rgbd_synth.yaml \
#     sbatch examples/cli/slurm_multinode.sh --data.init_args.pseudo_dir /shared/labels/rounds/stage1
#   sbatch --nodes=4 examples/cli/slurm_multinode.sh --ckpt_path last     # more nodes; resume the last run
#   SUBCOMMAND=pipeline PIPELINE=configs/pipeline/a2s_duts.yaml \
#     sbatch examples/cli/slurm_multinode.sh --out /shared/runs/a2s       # the whole A2S pipeline
#
# Extra arguments go to `usod fit` (or `usod pipeline`). Run from the repository root (or set USOD_ROOT), and keep the data,
# checkpoints (--trainer.default_root_dir) and any pseudo-label store on a filesystem all nodes see.
# --ntasks-per-node must equal --gpus-per-node: the script passes it to Lightning as --trainer.devices.
#SBATCH --job-name=usod-fit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=usod-fit-%j.out
# (site specific: add --partition, --account, --mem, --constraint as your cluster needs)

set -euo pipefail

cd "${USOD_ROOT:-${SLURM_SUBMIT_DIR:-.}}"
SUBCOMMAND="${SUBCOMMAND:-fit}"
EXPERIMENT="${EXPERIMENT:-configs/experiment/a2s_stage1_synth.yaml}"
PIPELINE="${PIPELINE:-configs/pipeline/a2s_synth.yaml}"
TRAINER_CONFIG="${TRAINER_CONFIG:-configs/trainer/ddp.yaml}"
NODES="${SLURM_NNODES:-1}"
TASKS_PER_NODE="${SLURM_NTASKS_PER_NODE:-1}"
TASKS_PER_NODE="${TASKS_PER_NODE%%(*}"  # "4(x2)" -> "4" on heterogeneous layouts
# DataLoader workers and intra-op threads share the task's cores
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
# export NCCL_DEBUG=WARN              # uncomment to debug hangs
# export NCCL_SOCKET_IFNAME=ib0       # the network interface between nodes, if NCCL picks the wrong one

if [[ "$SUBCOMMAND" == pipeline ]]; then
  srun usod pipeline --config "$PIPELINE" --num-nodes "$NODES" --devices "$TASKS_PER_NODE" "$@"
else
  srun usod "$SUBCOMMAND" \
    --config "$EXPERIMENT" \
    --config "$TRAINER_CONFIG" \
    --trainer.num_nodes "$NODES" \
    --trainer.devices "$TASKS_PER_NODE" \
    "$@"
fi
