#!/usr/bin/env bash
# The README's training picture, reproducible without downloading CIFAR (under 5 minutes on a 2-core CPU): a small
# PyramidNet (depth 20, alpha 48) trained on scikit-learn's handwritten digits (examples/digits_archive.py writes
# them as a CIFAR-10 archive) with ShakeDrop and without (p_drop_last=0), and both runs' curves in one plot.
#
#   bash examples/train_digits.sh runs/digits [more training options, for both runs]
#
# Writes OUT/cifar-10-python.tar.gz, the runs OUT/shakedrop and OUT/no-shakedrop (checkpoint.pt, log.json) and
# OUT/digits.png. No flip: a mirrored digit is another shape (or none).
set -euo pipefail
OUT=${1:?"usage: $0 OUT_DIR [training options]"}
shift
HERE=$(dirname "$0")
python "$HERE/digits_archive.py" "$OUT"
common=(--data "$OUT/cifar-10-python.tar.gz" --model pyramidnet110-a270-shakedrop --model-arg depth=20
        --model-arg alpha=48 --epochs 15 --batch-size 64 --lr 0.1 --warmup-epochs 1 --no-flip --overwrite)
python -m cifarops.train "${common[@]}" --out "$OUT/shakedrop" "$@"
python -m cifarops.train "${common[@]}" --model-arg p_drop_last=0 --out "$OUT/no-shakedrop" "$@"
python -m cifarops.train.plot "$OUT/shakedrop" "$OUT/no-shakedrop" --out "$OUT/digits.png" \
  --title "PyramidNet (depth 20, alpha 48) on scikit-learn's digits, with and without ShakeDrop"
