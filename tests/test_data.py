"""Data: the papers' RandomState subset rule, IDX reading (synthetic and the real Debian Fashion-MNIST), padding, errors."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.config import ConfigError, from_dict
from utils.data import (DEBIAN_FASHION_MNIST, DataConfig, fashion_mnist_idx, load_images, pad_images, read_idx,
                        subset_indices)

HAVE_DEBIAN_FMNIST = (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_DEBIAN_FMNIST, reason="Fashion-MNIST not installed: "
                                  "apt-get install dataset-fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def synthetic_fmnist(tmp_path):
    """A fake Fashion-MNIST test split of 12 images (gzipped images, raw labels) with known pixels."""
    rng = np.random.RandomState(5)
    images = rng.randint(0, 256, size=(12, 28, 28)).astype(np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    return tmp_path, images, labels


def test_subset_rule_matches_the_papers_and_leaves_global_numpy_alone():
    state = np.random.get_state()
    picked = subset_indices(10000, 512, data_seed=3)
    assert np.array_equal(picked, np.random.RandomState(3).choice(10000, 512, replace=False))
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert np.array_equal(subset_indices(7, None, 0), np.arange(7))
    with pytest.raises(ValueError, match="num_sub"):
        subset_indices(10, 11, 0)


def test_read_idx_gzip_and_raw_roundtrip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.gz", "a"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04" + bytes(8))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(3))
    with pytest.raises(ValueError, match="holds 3 values"):
        read_idx(tmp_path / "short")


def test_synthetic_fashion_mnist_subset_with_padding(synthetic_fmnist):
    directory, images, labels = synthetic_fmnist
    data = load_images(from_dict(DataConfig, {"name": "fashion-mnist", "data_dir": str(directory), "num_sub": 5,
                                              "data_seed": 1, "pad_to": 32}))
    expected = np.random.RandomState(1).choice(12, 5, replace=False)
    assert data.indices.tolist() == expected.tolist()
    assert data.x.shape == (5, 1, 32, 32) and data.x.dtype == torch.float32
    assert data.y.dtype == torch.int64 and data.y.tolist() == labels[expected].tolist()
    torch.testing.assert_close(data.x[:, 0, 2:30, 2:30], torch.from_numpy(images[expected]).float() / 255.0)
    border = data.x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.abs().sum() == 0


def test_relative_data_dir_resolves_against_base_dir(synthetic_fmnist):
    directory, _, _ = synthetic_fmnist
    data = load_images(DataConfig(name="fashion-mnist", data_dir=directory.name), base_dir=directory.parent)
    assert data.x.shape == (12, 1, 28, 28) and data.indices.tolist() == list(range(12))


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_images(DataConfig(name="fashion-mnist", data_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_images(DataConfig(name="cifar10", data_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_images(DataConfig(name="cifar100", data_dir=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded


def test_config_validation_and_unknown_dataset():
    with pytest.raises(ConfigError, match="num_sub"):
        DataConfig(name="cifar10", num_sub=0)
    with pytest.raises(ConfigError, match="source"):
        from_dict(DataConfig, {"name": "fashion-mnist", "source": "hub"})
    with pytest.raises(KeyError, match="valid names: .*cifar10, cifar100, fashion-mnist"):
        load_images(DataConfig(name="mnist"))


def test_pad_images_rejects_uneven_padding():
    with pytest.raises(ValueError, match="evenly"):
        pad_images(torch.zeros(1, 1, 28, 28), 31)


@needs_fmnist
def test_real_debian_fashion_mnist():
    images, labels = fashion_mnist_idx(DEBIAN_FASHION_MNIST, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels[:5].tolist() == [9, 2, 1, 1, 6]  # ankle boot, pullover, trouser, trouser, shirt
    assert np.bincount(labels).tolist() == [1000] * 10
    data = load_images(DataConfig(name="fashion-mnist", num_sub=16, data_seed=0, pad_to=32))
    expected = np.random.RandomState(0).choice(10000, 16, replace=False)
    assert data.indices.tolist() == expected.tolist() and data.y.tolist() == labels[expected].tolist()
    torch.testing.assert_close(data.x[:, 0, 2:30, 2:30], torch.from_numpy(images[expected]).float() / 255.0)
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
