#!/usr/bin/env bash
# Data-parallel training with DistributedDataParallel, launched by torchrun: one process per GPU (NCCL), or,
# without GPUs, N CPU processes (gloo). Any option of `python -m cifarops.train --help` applies.
#
#   bash examples/train_ddp.sh 4 ~/data/cifar-10-python.tar.gz runs/pyramidnet272-ddp [more options]
#
# --batch-size is the global batch: each of the N ranks trains on batch-size / N images a step (N must divide
# it), so the papers' hyper-parameters (batch 128, learning rate 0.5 for PyramidNet + ShakeDrop) apply
# unchanged on any N, and a run stopped with --stop-after resumes on another N, or in a single process, with
# --resume OUT/checkpoint.pt. Each rank draws its own ShakeDrop noise and augmentation (seeded from --seed,
# the epoch and the rank) and BatchNorm normalises over its own batch-size / N images. Only rank 0 prints
# and writes OUT/checkpoint.pt and OUT/log.json; images/s counts every rank.
set -euo pipefail
NPROC=${1:?"usage: $0 NPROC CIFAR_ARCHIVE OUT_DIR [options]"}
DATA=${2:?"usage: $0 NPROC CIFAR_ARCHIVE OUT_DIR [options]"}
OUT=${3:?"usage: $0 NPROC CIFAR_ARCHIVE OUT_DIR [options]"}
shift 3
# Without GPUs, one thread per process: N processes share the cores instead of oversubscribing them.
if ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
exec torchrun --standalone --nproc-per-node "$NPROC" -m cifarops.train --data "$DATA" --out "$OUT" \
  --model pyramidnet272-a200-shakedrop \
  --epochs 300 --batch-size 128 --lr 0.5 --momentum 0.9 --weight-decay 1e-4 \
  --schedule step --milestones 150 225 --gamma 0.1 \
  --amp bf16 --channels-last "$@"
