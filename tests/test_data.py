"""Data sets: the embedded subset, CIFAR in its official on-disk format, image folders."""

import hashlib
import pickle

import numpy as np
import pytest
import torch

from clrobust.data import embedded_path, load_dataset
from clrobust.errors import ClrobustError


def test_embedded_subset_is_the_documented_file():
    digest = hashlib.sha256(embedded_path().read_bytes()).hexdigest()
    assert digest == "bb5daad42b754c0c84829861f4c2923217250ceec30682e05a3ffb275dbaa009"
    test = load_dataset("cifar10-mini", "test")
    train = load_dataset("cifar10-mini", "train")
    assert test.images.shape == (846, 3, 32, 32) and test.images.dtype == torch.uint8
    assert len(train) == 4660 and train.num_classes == 10
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    x, y = next(test.batches(4))
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y.tolist() == [3, 8, 8, 0]


def _write_cifar(root, n_per_batch=5, cifar100=False):
    """A tiny folder in the official python format (pickled dicts of uint8 rows)."""
    rng = np.random.default_rng(0)
    folder = root / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if cifar100 else "labels"
    names = ["train", "test"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for name in names:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100 if cifar100 else 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, label_key: labels, "batch_label": name}, fh)
        written[name] = (data, labels)
    if cifar100:
        meta = {"fine_label_names": [f"c{i}" for i in range(100)]}
        meta_name = "meta"
    else:
        meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                "ship", "truck"]}
        meta_name = "batches.meta"
    with open(folder / meta_name, "wb") as fh:
        pickle.dump(meta, fh)
    return written


def test_cifar10_official_format(tmp_path):
    written = _write_cifar(tmp_path)
    with pytest.warns(UserWarning, match="differ from the official"):
        test = load_dataset("cifar10", "test", str(tmp_path))
    data, labels = written["test_batch"]
    assert test.labels.tolist() == labels
    assert torch.equal(test.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    with pytest.warns(UserWarning):
        train = load_dataset("cifar10", "train", str(tmp_path / "cifar-10-batches-py"))
    assert len(train) == 25 and train.classes[0] == "airplane"


def test_cifar100_official_format(tmp_path):
    written = _write_cifar(tmp_path, cifar100=True)
    with pytest.warns(UserWarning):
        train = load_dataset("cifar100", "train", str(tmp_path))
    assert train.labels.tolist() == written["train"][1] and train.num_classes == 100


def test_image_folder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "test" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / "test" / cls / f"{i}.png")
    data = load_dataset("imagefolder", "test", str(tmp_path))
    assert data.images.shape == (4, 3, 32, 32) and data.classes == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("name,split,root,match", [
    ("nope", "test", None, "unknown data set"),
    ("cifar10-mini", "val", None, "unknown split"),
    ("cifar10", "test", None, "needs --data-root"),
    ("cifar10", "test", "/nonexistent/folder", "not a folder"),
])
def test_bad_input(name, split, root, match):
    with pytest.raises(ClrobustError, match=match):
        load_dataset(name, split, root)


def test_empty_folders(tmp_path):
    with pytest.raises(ClrobustError, match="not found"):
        load_dataset("cifar10", "test", str(tmp_path))
    with pytest.raises(ClrobustError, match="no images|empty"):
        load_dataset("imagefolder", "test", str(tmp_path))
