"""Evaluation images as tensors: CIFAR-10/100 and Fashion-MNIST subsets drawn exactly as the papers draw them.

A subset is numpy.random.RandomState(data_seed).choice(len(split), num_sub, replace=False) over the split
(a local RandomState, never the global numpy state); images are ToTensor only (uint8 / 255, no
normalisation) and every image keeps its dataset index, which seeds its per-image randomness.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

from utils.config import require
from utils.paths import resolve_path
from utils.registry import Lazy, Registry

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

Split = Literal["train", "test"]


class ImageSet(NamedTuple):
    """x (N, C, H, W) float32 in [0, 1], y (N,) int64 labels, indices (N,) int64 dataset indices."""

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor


@dataclass(frozen=True)
class DataConfig:
    """Which split and subset to load; data_dir resolves against the caller's base directory."""

    name: str  # cifar10 | cifar100 | fashion-mnist
    data_dir: Optional[str] = None  # None: ./data for CIFAR, the Debian package dir for Fashion-MNIST
    split: Split = "test"
    num_sub: Optional[int] = None  # None: the whole split
    data_seed: int = 0
    download: bool = False  # let torchvision download a missing dataset
    source: Literal["idx", "torchvision"] = "idx"  # Fashion-MNIST: IDX files in data_dir, or torchvision's copy
    pad_to: Optional[int] = None  # zero-pad square images to this size (Fashion-MNIST 28 -> 32)
    channels: Optional[int] = None  # repeat 1-channel images to this many channels (Fashion-MNIST -> 3)

    def __post_init__(self) -> None:
        require(self.num_sub is None or self.num_sub > 0, f"data.num_sub must be > 0 or null, got {self.num_sub}")
        require(self.channels is None or self.channels >= 1, f"data.channels must be >= 1 or null, got {self.channels}")
        require(self.data_seed >= 0, f"data.data_seed must be >= 0, got {self.data_seed}")


def subset_indices(dataset_size: int, num_sub: Optional[int], data_seed: int) -> np.ndarray:
    """(num_sub,) int64 indices: RandomState(data_seed).choice(dataset_size, num_sub, replace=False); all if None."""
    if num_sub is None:
        return np.arange(dataset_size, dtype=np.int64)
    if not 0 < num_sub <= dataset_size:
        raise ValueError(f"num_sub must be in [1, {dataset_size}], got {num_sub}")
    return np.random.RandomState(data_seed).choice(dataset_size, num_sub, replace=False).astype(np.int64)


def to_image_set(images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 pad_to: Optional[int] = None) -> ImageSet:
    """Select `indices` from uint8 images (N, H, W) or (N, H, W, C) and labels; ToTensor scaling, optional padding."""
    picked = torch.from_numpy(np.ascontiguousarray(images[indices]))
    picked = picked.unsqueeze(1) if picked.dim() == 3 else picked.permute(0, 3, 1, 2)
    x = picked.float().div(255.0)
    if pad_to is not None:
        x = pad_images(x, pad_to)
    y = torch.as_tensor(np.asarray(labels)[indices], dtype=torch.int64)
    return ImageSet(x.contiguous(), y, torch.from_numpy(indices.astype(np.int64)))


def pad_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad square images (N, C, s, s) symmetrically to (N, C, size, size); size - s must be even."""
    margin = size - x.shape[-1]
    if margin < 0 or margin % 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"cannot pad images of size {tuple(x.shape[-2:])} evenly to {size}x{size}")
    half = margin // 2
    return F.pad(x, (half, half, half, half))


def repeat_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, 1, H, W) -> (N, channels, H, W) by repeating the single channel; images with `channels` pass through."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] != 1:
        raise ValueError(f"data.channels: cannot turn {x.shape[1]}-channel images into {channels} channels "
                         "(only 1-channel images are repeated)")
    return x.repeat(1, channels, 1, 1)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped when the name ends in .gz) as a numpy array of its stored shape and dtype."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path:
    """directory/stem.gz or directory/stem, with a clear error saying how to get the files."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST file {stem}[.gz] not found in {directory}; install it with "
                            "`apt-get install dataset-fashion-mnist`, or set data.source: torchvision "
                            "and data.download: true")


def fashion_mnist_idx(directory: Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 28, 28) and labels (N,) of a Fashion-MNIST split from its IDX files in `directory`."""
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    images, labels = read_idx(_find_idx(directory, image_stem)), read_idx(_find_idx(directory, label_stem))
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{directory}: Fashion-MNIST {split} images {images.shape} and labels {labels.shape} "
                         "do not match")
    return images, labels


def _torchvision_arrays(dataset_cls: Callable, root: Path, split: Split, download: bool,
                        how: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and labels of a torchvision dataset; a missing one is a clear FileNotFoundError."""
    try:
        dataset = dataset_cls(root=str(root), train=split == "train", download=download)
    except RuntimeError as err:
        raise FileNotFoundError(f"{dataset_cls.__name__} {split} split not found under {root} ({err}); "
                                f"{how}") from None
    return np.asarray(dataset.data), np.asarray(dataset.targets)


def _cifar_how(folder: str) -> str:
    """How to get a CIFAR dataset that is not on disk."""
    return (f"pass download=True (data.download: true) once on a networked machine, "
            f"or put torchvision's {folder} folder in data_dir")


DATASETS: Registry[tuple[np.ndarray, np.ndarray]] = Registry("dataset", {
    "imagenet": Lazy("utils.imagenet", "imagenet_224"),
    "imagenet-256": Lazy("utils.imagenet", "imagenet_256"),
    "celebahq-Eyeglasses": Lazy("utils.celebahq", "celebahq_eyeglasses"),
    "celebahq-Smiling": Lazy("utils.celebahq", "celebahq_smiling"),
})


@DATASETS.register("cifar10")
def _cifar10(config: DataConfig, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 via torchvision: images (N, 32, 32, 3) uint8, labels (N,)."""
    import torchvision

    return _torchvision_arrays(torchvision.datasets.CIFAR10, root, config.split, config.download,
                               _cifar_how("cifar-10-batches-py"))


@DATASETS.register("cifar100")
def _cifar100(config: DataConfig, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 (fine labels) via torchvision: images (N, 32, 32, 3) uint8, labels (N,)."""
    import torchvision

    return _torchvision_arrays(torchvision.datasets.CIFAR100, root, config.split, config.download,
                               _cifar_how("cifar-100-python"))


def _fashion_mnist_torchvision(root: Path, split: Split, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST via torchvision.datasets.FashionMNIST under root."""
    import torchvision

    return _torchvision_arrays(torchvision.datasets.FashionMNIST, root, split, download,
                               "pass download=True once on a networked machine, or use data.source: idx")


FASHION_MNIST_SOURCES: dict[str, Callable[[Path, Split, bool], tuple[np.ndarray, np.ndarray]]] = {
    "idx": lambda root, split, download: fashion_mnist_idx(root, split),
    "torchvision": _fashion_mnist_torchvision,
}


@DATASETS.register("fashion-mnist")
def _fashion_mnist(config: DataConfig, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from IDX files (default: the Debian package's directory) or torchvision."""
    return FASHION_MNIST_SOURCES[config.source](root, config.split, config.download)


DEFAULT_ROOTS = {"fashion-mnist": DEBIAN_FASHION_MNIST}


def dataset_root(config: DataConfig, base_dir: Path) -> Path:
    """data_dir by the config path rule (utils.paths); by default the Debian directory (Fashion-MNIST IDX) or data/."""
    if config.data_dir is None:
        if config.source == "idx" and config.name in DEFAULT_ROOTS:
            return DEFAULT_ROOTS[config.name]
        return resolve_path("data", base_dir)
    return resolve_path(config.data_dir, base_dir)


def load_images(config: DataConfig, base_dir: Path | str = ".") -> ImageSet:
    """The configured split, subset by (num_sub, data_seed), as an ImageSet of [0, 1] tensors with dataset indices."""
    images, labels = DATASETS.build(config.name, config, dataset_root(config, Path(base_dir)))
    indices = subset_indices(len(labels), config.num_sub, config.data_seed)
    data = to_image_set(images, labels, indices, config.pad_to)
    if config.channels is None:
        return data
    return data._replace(x=repeat_channels(data.x, config.channels).contiguous())
