"""CelebA-HQ with CelebA attribute labels, registered into utils.data.DATASETS ('celebahq-Eyeglasses', ...).

data_dir holds DiffPure's `dataset/celebahq` layout: `images/` with the CelebA-HQ images under their CelebA file
names (000004.jpg or .png), CelebA's `list_attr_celeba.txt` and `list_eval_partition.txt`. Images are sorted by
file name; split 'test' is CelebA's partition 1 ('val'), the one DiffPure evaluates, 'train' is partition 0.
Label 1 = attribute present (CelebA's -1 -> 0). Images are decoded lazily, Resize(256) then ToTensor, no
normalisation. DiffPure keeps RandomState(data_seed).choice(val, int(0.02 len), replace=False) and attacks its
first batch; load_images' RandomState(data_seed).choice(len(val), num_sub) gives those same first num_sub images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.data import DataConfig
from utils.imagenet import ImageFolderImages

CELEBAHQ_ATTRIBUTES = ("Eyeglasses", "Smiling")  # the attributes DiffPure evaluates (CelebA column names)
CELEBAHQ_SIZE = 256
PARTITIONS = {"train": 0, "test": 1}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CELEBAHQ_HOW = ("put the CelebA-HQ images under their CelebA file names (e.g. 000004.jpg) in <data_dir>/images/ "
                "and CelebA's list_attr_celeba.txt and list_eval_partition.txt in <data_dir>/ (DiffPure's "
                "dataset/celebahq layout); CelebA-HQ is built with github.com/tkarras/progressive_growing_of_gans "
                "(dataset_tool.py create_celebahq), the lists are at mmlab.ie.cuhk.edu.hk/projects/CelebA.html")


def _how(root: Path) -> str:
    """How to set up the CelebA-HQ folder `root`."""
    return CELEBAHQ_HOW.replace("<data_dir>", str(root))


def _require(path: Path, root: Path) -> Path:
    """path if it exists, else a one-line FileNotFoundError saying how to set up data_dir."""
    if not path.exists():
        raise FileNotFoundError(f"CelebA-HQ data not found: {path} is missing; {_how(root)}")
    return path


def read_attributes(path: Path, attribute: str) -> dict[str, int]:
    """{CelebA file name: 0/1} for `attribute` from list_attr_celeba.txt (count line, names line, rows of +-1)."""
    with open(path) as f:
        f.readline()
        names = f.readline().split()
        if attribute not in names:
            raise ValueError(f"{path}: no attribute '{attribute}' (columns: {', '.join(names)})")
        column = names.index(attribute) + 1
        return {parts[0]: int(parts[column] == "1") for parts in map(str.split, f) if len(parts) > column}


def read_partitions(path: Path) -> dict[str, int]:
    """{CelebA file name: partition} from list_eval_partition.txt (0 train, 1 val, 2 test)."""
    with open(path) as f:
        return {parts[0]: int(parts[1]) for parts in map(str.split, f) if len(parts) == 2}


def celebahq(config: DataConfig, root: Path, attribute: str) -> tuple[ImageFolderImages, np.ndarray]:
    """Lazy uint8 images (N, 256, 256, 3) of the split and their int64 labels (N,) for `attribute`."""
    images_dir = _require(root / "images", root)
    labels = read_attributes(_require(root / "list_attr_celeba.txt", root), attribute)
    partitions = read_partitions(_require(root / "list_eval_partition.txt", root))
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    celeba_names = [p.stem + ".jpg" for p in files]
    unknown = [n for n in celeba_names if n not in labels or n not in partitions]
    if not files or unknown:
        found = f"{len(unknown)} image(s) not in the CelebA lists, e.g. {unknown[0]}" if unknown else "no images"
        raise FileNotFoundError(f"CelebA-HQ data in {root}: {found}; {_how(root)}")
    part = PARTITIONS[config.split]
    picked = [(str(p), labels[n]) for p, n in zip(files, celeba_names) if partitions[n] == part]
    return ImageFolderImages(picked, CELEBAHQ_SIZE), np.array([y for _, y in picked], dtype=np.int64)


def celebahq_eyeglasses(config: DataConfig, root: Path) -> tuple[ImageFolderImages, np.ndarray]:
    """Dataset 'celebahq-Eyeglasses'."""
    return celebahq(config, root, "Eyeglasses")


def celebahq_smiling(config: DataConfig, root: Path) -> tuple[ImageFolderImages, np.ndarray]:
    """Dataset 'celebahq-Smiling'."""
    return celebahq(config, root, "Smiling")
