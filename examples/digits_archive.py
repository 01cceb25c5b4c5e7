"""Writes scikit-learn's handwritten digits (1797 images of 8x8, bundled with scikit-learn: nothing to download)
as a CIFAR-10 archive in the official python format, so that ``python -m cifarops.train`` can train on real
images in minutes on a CPU:

    python examples/digits_archive.py runs/digits          # -> runs/digits/cifar-10-python.tar.gz

Each digit is scaled from 0..16 to 0..255, enlarged to 32x32 (bilinear) and repeated over the three colour
channels; a fixed shuffle (seed 0) puts 297 images in the test batch and 1500 in the five training batches
(300 each). Labels are the digits, the class names "0" to "9".
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
import tarfile

import numpy as np
import torch
import torch.nn.functional as F

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TEST_IMAGES = 297


def digits_as_cifar() -> tuple[np.ndarray, np.ndarray]:
    """The digits as CIFAR rows (N, 3072: the red, green, blue planes of 32x32, uint8) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images).float()[:, None] * (255 / 16)  # (N, 1, 8, 8), 0..255
    large = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    rgb = large.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    return rgb.reshape(len(rgb), 3072).numpy(), digits.target.astype(np.int64)


def batches(images: np.ndarray, labels: np.ndarray) -> dict:
    """The archive's pickled dicts (bytes keys, as the official ones): five training batches, a test batch,
    the meta file."""
    order = np.random.default_rng(0).permutation(len(images))
    test, train = order[:TEST_IMAGES], order[TEST_IMAGES:]

    def batch(name, index):
        return {b"batch_label": name.encode(), b"labels": [int(v) for v in labels[index]],
                b"data": np.ascontiguousarray(images[index]), b"filenames": [b"digit_%d.png" % i for i in index]}

    files = {f"data_batch_{i + 1}": batch(f"training batch {i + 1} of 5", part)
             for i, part in enumerate(np.array_split(train, 5))}
    files["test_batch"] = batch("testing batch 1 of 1", test)
    files["batches.meta"] = {b"label_names": [str(d).encode() for d in range(10)],
                             b"num_cases_per_batch": len(train) // 5, b"num_vis": 3072}
    return files


def write(out_dir: str) -> str:
    """Writes OUT_DIR/cifar-10-python.tar.gz (through a temporary file, removed if anything fails, so a
    failed run leaves no partial archive); returns its path."""
    files = batches(*digits_as_cifar())  # before anything is created: a missing scikit-learn writes nothing
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, ARCHIVE)
    tmp = path + ".tmp"
    try:
        with tarfile.open(tmp, "w:gz") as archive:
            for name, payload in files.items():
                blob = pickle.dumps(payload, protocol=2)  # as the official archive
                info = tarfile.TarInfo(f"{FOLDER}/{name}")
                info.size = len(blob)
                archive.addfile(info, io.BytesIO(blob))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder for cifar-10-python.tar.gz")
    args = parser.parse_args(argv)
    print(f"wrote {write(args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
