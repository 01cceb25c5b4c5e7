#!/usr/bin/env bash
# Graham's CIFAR-10 fractional max-pooling network (arXiv 1412.6071: (160nC2 - FMP cbrt 2)12 - C2 - C1 -
# output, overlapping pseudorandom pooling shared per image, dropout growing to 0.5), evaluated as in the
# paper by averaging the class probabilities over 12 draws of the pooling regions (--fmp-draws 12).
#
#   bash examples/train_fmp.sh ~/data/cifar-10-python.tar.gz runs/fmp [more options]
#
# The optimiser settings are ours, not the paper's (Graham trained with his own SparseConvNet and affine
# augmentation, which this script replaces by crop and flip): Nesterov SGD, cosine schedule after a 5-epoch
# warm-up, weight decay 5e-4. The 79M-parameter network on 94x94 inputs is memory-hungry: full
# checkpointing keeps one input per layer, bf16 and channels_last are for a recent GPU.
set -euo pipefail
DATA=${1:?"usage: $0 CIFAR_ARCHIVE OUT_DIR [options]"}
OUT=${2:?"usage: $0 CIFAR_ARCHIVE OUT_DIR [options]"}
shift 2
exec python -m cifarops.train --data "$DATA" --out "$OUT" \
  --model fmp-graham-cifar10 --fmp-draws 12 \
  --epochs 250 --batch-size 128 --lr 0.05 --momentum 0.9 --weight-decay 5e-4 \
  --schedule cosine --warmup-epochs 5 \
  --checkpoint full --amp bf16 --channels-last "$@"
