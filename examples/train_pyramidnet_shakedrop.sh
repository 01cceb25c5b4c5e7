#!/usr/bin/env bash
# PyramidNet-272 (alpha = 200, bottleneck) + ShakeDrop on CIFAR-10, with Yamada et al.'s training setup
# (arXiv 1802.02375: 300 epochs, batch 128, SGD with Nesterov momentum 0.9, weight decay 1e-4, learning rate
# 0.5 divided by 10 at epochs 150 and 225; random crop with 4-pixel padding and horizontal flip).
#
#   bash examples/train_pyramidnet_shakedrop.sh ~/data/cifar-10-python.tar.gz runs/pyramidnet272 [more options]
#
# For CIFAR-100 pass cifar-100-python.tar.gz (the dataset follows the archive's name). bf16 autocast and
# channels_last are for speed on a recent GPU; --checkpoint selective lets the batch fit a smaller one. Stop
# and continue later with --stop-after EPOCHS and --resume OUT/checkpoint.pt.
set -euo pipefail
DATA=${1:?"usage: $0 CIFAR_ARCHIVE OUT_DIR [options]"}
OUT=${2:?"usage: $0 CIFAR_ARCHIVE OUT_DIR [options]"}
shift 2
exec python -m cifarops.train --data "$DATA" --out "$OUT" \
  --model pyramidnet272-a200-shakedrop \
  --epochs 300 --batch-size 128 --lr 0.5 --momentum 0.9 --weight-decay 1e-4 \
  --schedule step --milestones 150 225 --gamma 0.1 \
  --amp bf16 --channels-last "$@"
