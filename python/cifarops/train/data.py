"""CIFAR-10 / CIFAR-100 from the official python-format archive, and the standard augmentation on tensors.

The archive is read as it is downloaded (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``) or
extracted (the ``cifar-10-batches-py`` / ``cifar-100-python`` folder, or the folder holding it). Its batches
are pickled dicts with bytes keys, ``b"data"`` a (N, 3072) uint8 numpy array (1024 red, 1024 green, 1024 blue
values per image, rows in order) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). They are
unpickled with a restricted unpickler that knows only numpy's array-rebuilding functions, rebuilt as torch
tensors without numpy: a pickle can run any code it names, and an archive from the web should not.

Augmentation runs on whole batches on the training device (the dataset stays there as uint8, 150 MB):
random crop with zero padding and horizontal flip on the raw pixels (as torchvision's RandomCrop and
RandomHorizontalFlip on the image), per-channel normalisation, then Cutout on the normalised batch (as
DeVries and Taylor's code, after Normalize). Each random op is a thin wrapper around a deterministic one
taking the drawn offsets, masks and centres, which the tests check by hand.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

IMAGE_SHAPE = (3, 32, 32)


class DataError(ValueError):
    """A missing, corrupt or malformed CIFAR archive."""


@dataclass(frozen=True)
class Layout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    classes: int


DATASETS = {
    "cifar10": Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                      "batches.meta", b"labels", b"label_names", 10),
    "cifar100": Layout("cifar-100-python", ("train",), ("test",), "meta", b"fine_labels", b"fine_label_names", 100),
}


@dataclass
class Cifar:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of both splits, and the class names."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# --- a numpy-free, code-free unpickler for numpy arrays ----------------------------------------------------

_DTYPES = {"u1": torch.uint8, "i1": torch.int8, "i2": torch.int16, "i4": torch.int32, "i8": torch.int64}


class _DType:
    def __init__(self, name, align=False, copy=False):
        self.name = name.decode("latin1") if isinstance(name, bytes) else str(name)
        self.byteorder = "|"

    def __setstate__(self, state):
        order = state[1]
        self.byteorder = order.decode("latin1") if isinstance(order, bytes) else order


class _Array:
    """What numpy's pickle of an ndarray rebuilds to: shape, dtype, order and raw bytes."""

    def __init__(self, *args):
        self.shape, self.dtype, self.fortran, self.raw = None, None, False, None

    def __setstate__(self, state):
        _, self.shape, self.dtype, self.fortran, self.raw = state

    def to_tensor(self, what: str) -> torch.Tensor:
        if not isinstance(self.dtype, _DType) or self.dtype.name.lstrip("<|") not in _DTYPES \
                or self.dtype.byteorder == ">":
            name = getattr(self.dtype, "name", self.dtype)
            raise DataError(f"{what}: unsupported array dtype {name!r}")
        dtype = _DTYPES[self.dtype.name.lstrip("<|")]
        shape = tuple(int(s) for s in self.shape)
        raw = self.raw.encode("latin1") if isinstance(self.raw, str) else bytes(self.raw)
        count = 1
        for s in shape:
            count *= s
        if len(raw) != count * dtype.itemsize:
            raise DataError(f"{what}: array of shape {shape} holds {len(raw)} bytes, not {count * dtype.itemsize}")
        flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        if self.fortran:
            return flat.reshape(shape[::-1]).permute(*reversed(range(len(shape)))).contiguous()
        return flat.reshape(shape)


def _reconstruct(cls, shape, typecode):
    return _Array()


def _frombuffer(buffer, dtype, shape, order):
    array = _Array()
    array.__setstate__((1, shape, dtype, order == "F", bytes(buffer)))
    return array


def _encode(text, encoding="latin1"):
    return text.encode(encoding)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _Array,
    ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _encode,  # how protocol-2 pickles written by Python 3 store bytes
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays, "
                                         "lists and strings")
        return _ALLOWED[(module, name)]


def _unpickle(blob: bytes, what: str) -> dict:
    try:
        batch = _Unpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as error:  # any failure of a malformed pickle (EOFError, UnpicklingError, TypeError, ...)
        raise DataError(f"{what}: not a readable CIFAR pickle ({type(error).__name__}: {error})") from error
    if not isinstance(batch, dict):
        raise DataError(f"{what}: expected a pickled dict, got {type(batch).__name__}")
    return batch


# --- reading the archive --------------------------------------------------------------------------------------

def _read_members(path: str, layout: Layout) -> dict[str, bytes]:
    """The raw bytes of every file the layout needs, from the .tar.gz or the directory."""
    names = (*layout.train, *layout.test, layout.meta)
    if not os.path.exists(path):
        raise DataError(f"--data: {path!r} does not exist (expected the {layout.folder} archive or folder)")
    if os.path.isdir(path):
        is_folder = os.path.basename(os.path.normpath(path)) == layout.folder
        folder = path if is_folder else os.path.join(path, layout.folder)
        if not os.path.isdir(folder) and all(os.path.isfile(os.path.join(path, n)) for n in names):
            folder = path  # a renamed extracted folder
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            raise DataError(f"--data: {folder!r} lacks {missing} of the {layout.folder} layout")
        out = {}
        for n in names:
            with open(os.path.join(folder, n), "rb") as f:
                out[n] = f.read()
        return out
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {m.name: m for m in archive.getmembers() if m.isfile()}
            out = {}
            for n in names:
                member = members.get(f"{layout.folder}/{n}")
                if member is None:
                    raise DataError(f"--data: archive {path!r} has no {layout.folder}/{n} (is it the right dataset?)")
                out[n] = archive.extractfile(member).read()
            return out
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"--data: {path!r} is not a readable .tar.gz archive, or is truncated "
                        f"({type(error).__name__}: {error})") from error


def _split(blobs: dict[str, bytes], files: tuple[str, ...], layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in files:
        batch = _unpickle(blobs[name], name)
        for key in (b"data", layout.label_key):
            if key not in batch:
                raise DataError(f"{name}: no {key!r} key (has {sorted(batch)})")
        data = batch[b"data"]
        if not isinstance(data, _Array):
            raise DataError(f"{name}: b'data' must be a numpy array, got {type(data).__name__}")
        data = data.to_tensor(name)
        if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{name}: b'data' must be (N, 3072) uint8, got {tuple(data.shape)} {data.dtype}")
        raw = batch[layout.label_key]
        if isinstance(raw, _Array):
            label = raw.to_tensor(name).to(torch.int64)
        elif isinstance(raw, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
            label = torch.tensor(raw, dtype=torch.int64)
        else:
            raise DataError(f"{name}: {layout.label_key!r} must be a list of ints")
        if label.dim() != 1 or len(label) != len(data):
            raise DataError(f"{name}: {len(data)} images but {tuple(label.shape)} labels")
        if len(label) and (int(label.min()) < 0 or int(label.max()) >= layout.classes):
            raise DataError(f"{name}: labels range over [{int(label.min())}, {int(label.max())}], outside the "
                            f"{layout.classes} classes of {layout.folder} (wrong --dataset?)")
        images.append(data.reshape(-1, *IMAGE_SHAPE))
        labels.append(label)
    return torch.cat(images), torch.cat(labels)


def load_cifar(path: str, dataset: str) -> Cifar:
    """Reads ``dataset`` ("cifar10" or "cifar100") from ``path``; raises :class:`DataError` naming what is
    wrong before anything else happens."""
    if dataset not in DATASETS:
        raise DataError(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    layout = DATASETS[dataset]
    blobs = _read_members(path, layout)
    meta = _unpickle(blobs[layout.meta], layout.meta)
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or len(names) != layout.classes:
        count = len(names) if isinstance(names, list) else None
        raise DataError(f"{layout.meta}: expected {layout.classes} class names under {layout.names_key!r}, got "
                        f"{count} (wrong --dataset?)")
    train_images, train_labels = _split(blobs, layout.train, layout)
    test_images, test_labels = _split(blobs, layout.test, layout)
    if len(train_images) < 2 or len(test_images) < 1:
        raise DataError(f"--data: needs at least 2 training and 1 test image, got {len(train_images)} and "
                        f"{len(test_images)}")
    class_names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
    return Cifar(train_images, train_labels, test_images, test_labels, class_names)


# --- augmentation -----------------------------------------------------------------------------------------------

def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units."""
    x = images.to(torch.float64) / 255
    return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 or [0, 1] float images -> (x - mean) / std per channel, float32."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def crop_at(images: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Zero-pads each image by ``padding`` and takes the original-size window at (top[i], left[i]) of the
    padded image (so top = left = padding is the identity)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = top.view(n, 1) + torch.arange(h, device=images.device)
    cols = left.view(n, 1) + torch.arange(w, device=images.device)
    picked = padded[torch.arange(n, device=images.device).view(n, 1, 1), :, rows.view(n, h, 1), cols.view(n, 1, w)]
    return picked.permute(0, 3, 1, 2).contiguous()  # advanced indexing put the channel last


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirrors left-right the images whose ``flip`` entry is True."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def cutout_at(images: torch.Tensor, size: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Zeroes in each image the size x size square centred at (cy[i], cx[i]) (rows cy - size // 2 to
    cy - size // 2 + size - 1), clipped to the image, as DeVries and Taylor's Cutout."""
    _, _, h, w = images.shape
    y = torch.arange(h, device=images.device).view(1, h, 1)
    x = torch.arange(w, device=images.device).view(1, 1, w)
    y0, x0 = (cy - size // 2).view(-1, 1, 1), (cx - size // 2).view(-1, 1, 1)
    inside = (y >= y0) & (y < y0 + size) & (x >= x0) & (x < x0 + size)
    return images.masked_fill(inside.unsqueeze(1), 0)


def augment(images: torch.Tensor, mean, std, *, padding: int, flip: bool, cutout: int,
            generator: torch.Generator) -> torch.Tensor:
    """The training transform of a uint8 batch: random crop with zero padding, random horizontal flip,
    normalisation, Cutout; every draw from ``generator`` (on the images' device)."""
    n, _, h, w = images.shape
    device = images.device
    if padding > 0:
        top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
        left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
        images = crop_at(images, padding, top, left)
    if flip:
        images = flip_where(images, torch.rand(n, generator=generator, device=device) < 0.5)
    x = normalise(images, mean, std)
    if cutout > 0:
        cy = torch.randint(0, h, (n,), generator=generator, device=device)
        cx = torch.randint(0, w, (n,), generator=generator, device=device)
        x = cutout_at(x, cutout, cy, cx)
    return x


def batch_indices(count: int, batch_size: int, *, generator: Optional[torch.Generator] = None,
                  drop_last: bool = False, device=None) -> Iterator[torch.Tensor]:
    """Index tensors of consecutive batches, shuffled when ``generator`` is given. ``drop_last`` drops an
    incomplete last batch (unless it is the only one), so that BatchNorm never sees a batch of one."""
    order = (torch.randperm(count, generator=generator, device=device) if generator is not None
             else torch.arange(count, device=device))
    stop = count - count % batch_size if drop_last and count >= batch_size else count
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]
