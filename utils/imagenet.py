"""ImageNet validation images from an ImageFolder, listed in utils.data.DATASETS ('imagenet', 'imagenet-256').

data_dir is the val split laid out as an ImageFolder (one folder per WordNet id, e.g. n01440764/, as produced by
the usual valprep.sh), so torchvision's sorted class order gives the standard 0..999 labels. Images are decoded
lazily: only the subset that load_images selects (RandomState(data_seed) as for every dataset) is read, resized
(shorter side 256, bilinear) and centre-cropped to 224 (Cohen et al., DiffPure, DiffSmooth) or 256, then ToTensor.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.config import require
from utils.data import DataConfig

IMAGENET_CLASSES = 1000
RESIZE = 256
VALPREP = ("point data.data_dir at the ImageNet val split arranged in class folders (n01440764/...), e.g. with "
           "https://raw.githubusercontent.com/soumith/imagenetloader.torch/master/valprep.sh")


class ImageFolderImages:
    """Lazy uint8 images (N, crop, crop, 3) of an ImageFolder: indexing with an index array decodes only those."""

    def __init__(self, samples: Sequence[tuple[str, int]], crop: int) -> None:
        self.paths = [path for path, _ in samples]
        self.crop = int(crop)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        """uint8 array (len(indices), crop, crop, 3): RGB, Resize(256) then CenterCrop(crop)."""
        return np.stack([self.load(self.paths[int(i)]) for i in np.atleast_1d(indices)])

    def load(self, path: str) -> np.ndarray:
        """One image as uint8 (crop, crop, 3)."""
        from PIL import Image
        from torchvision import transforms

        with Image.open(path) as image:
            rgb = image.convert("RGB")
        cropped = transforms.CenterCrop(self.crop)(transforms.Resize(RESIZE)(rgb))
        return np.asarray(cropped, dtype=np.uint8)


def imagefolder_samples(root: Path) -> list[tuple[str, int]]:
    """(path, label) of every image under root's class folders, in torchvision ImageFolder order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet folder not found: {root}; {VALPREP}")
    classes, class_to_idx = find_classes(str(root))
    if len(classes) != IMAGENET_CLASSES:
        raise ValueError(f"{root} has {len(classes)} class folders, expected {IMAGENET_CLASSES}; {VALPREP}")
    return make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def imagenet_val(config: DataConfig, root: Path, crop: int) -> tuple[ImageFolderImages, np.ndarray]:
    """Lazy val images and int64 labels (N,) from the ImageFolder at root."""
    require(config.split == "test", f"data.split '{config.split}': the ImageNet loader reads one folder, the val "
                                    "split; use split: test and point data_dir at it")
    samples = imagefolder_samples(root)
    if not samples:
        raise FileNotFoundError(f"no images found under {root}; {VALPREP}")
    return ImageFolderImages(samples, crop), np.array([label for _, label in samples], dtype=np.int64)


imagenet_224 = functools.partial(imagenet_val, crop=224)
imagenet_256 = functools.partial(imagenet_val, crop=256)
