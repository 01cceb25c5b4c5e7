"""Tiny CIFAR archives written in the official python format (pickled dicts with bytes keys, numpy uint8 data,
protocol 2 in a .tar.gz as the real download, or an extracted folder), and the arrays they hold: the data of
the training script's tests (test_train.py, test_train_ddp.py)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import torch

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def batch_files(dataset: str, n_train: int = 10, n_test: int = 4, seed: int = 0, labels=None) -> dict:
    """The pickled dicts of an official archive (bytes keys, numpy uint8 data), random images and labels."""
    rng = np.random.default_rng(seed)
    classes = 10 if dataset == "cifar10" else 100
    key = b"labels" if dataset == "cifar10" else b"fine_labels"

    def batch(n):
        y = rng.integers(0, classes, n) if labels is None else labels(rng, n)
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        return {b"batch_label": b"tiny", key: [int(v) for v in y], b"data": data}

    if dataset == "cifar10":
        files = {f"data_batch_{i}": batch(n_train // 5) for i in range(1, 6)}
        files.update(test_batch=batch(n_test), **{"batches.meta": {b"label_names": [b"c%d" % i for i in range(10)]}})
    else:
        files = {"train": batch(n_train), "test": batch(n_test),
                 "meta": {b"fine_label_names": [b"c%d" % i for i in range(100)]}}
    return files


def write_archive(root, dataset: str, files: dict, as_tar: bool, protocol: int = 2) -> str:
    """Writes ``files`` as the official .tar.gz (protocol 2, as the real archive) or extracted folder."""
    folder = FOLDERS[dataset]
    blobs = {n: v if isinstance(v, bytes) else pickle.dumps(v, protocol=protocol) for n, v in files.items()}
    if as_tar:
        path = os.path.join(root, folder.replace("-batches-py", "-python") + ".tar.gz")
        with tarfile.open(path, "w:gz") as archive:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(blob)
                archive.addfile(info, io.BytesIO(blob))
        return path
    os.makedirs(os.path.join(root, folder), exist_ok=True)
    for name, blob in blobs.items():
        with open(os.path.join(root, folder, name), "wb") as f:
            f.write(blob)
    return str(root)


def split_arrays(dataset: str, files: dict, split: str):
    """The oracle: images (N, 3, 32, 32) and labels straight from the numpy arrays."""
    names = {"cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
             "cifar100": {"train": ["train"], "test": ["test"]}}[dataset][split]
    key = b"labels" if dataset == "cifar10" else b"fine_labels"
    images = np.concatenate([files[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
    return torch.from_numpy(images), torch.tensor(sum((files[n][key] for n in names), []))
