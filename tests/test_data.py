"""Data sets: the embedded subset, CIFAR in its official on-disk format, image folders."""

import hashlib
import os
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


def _write_cifar(root, n_per_batch=5, cifar100=False, protocol=pickle.DEFAULT_PROTOCOL, bytes_keys=False):
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
        batch = {"data": data, label_key: labels, "batch_label": name}
        if bytes_keys:  # what Python 2 wrote: byte-string keys and values
            batch = {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in batch.items()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
        written[name] = (data, labels)
    if cifar100:
        meta = {"fine_label_names": [f"c{i}" for i in range(100)]}
        meta_name = "meta"
    else:
        meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                "ship", "truck"]}
        meta_name = "batches.meta"
    with open(folder / meta_name, "wb") as fh:
        pickle.dump(meta, fh, protocol=protocol)
    return written


class _Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol,bytes_keys", [(2, True), (2, False), (pickle.HIGHEST_PROTOCOL, False)])
def test_cifar_batches_of_every_pickle_protocol_read(tmp_path, protocol, bytes_keys):
    written = _write_cifar(tmp_path, protocol=protocol, bytes_keys=bytes_keys)
    with pytest.warns(UserWarning):
        test = load_dataset("cifar10", "test", str(tmp_path))
    assert test.labels.tolist() == written["test_batch"][1]
    assert torch.equal(test.images, torch.from_numpy(written["test_batch"][0].reshape(-1, 3, 32, 32)))


@pytest.mark.parametrize("what", ["payload-in-batch", "payload-in-meta", "payload-nested", "not-a-dict",
                                  "truncated", "float-pixels", "label-out-of-range", "missing-key"])
def test_planted_cifar_batches_are_refused_without_running_code(tmp_path, what):
    _write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    marker = tmp_path / "marker"
    target = folder / ("batches.meta" if what == "payload-in-meta" else "test_batch")
    good = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    bad = {"payload-in-batch": _Payload(marker), "payload-in-meta": {"label_names": _Payload(marker)},
           "payload-nested": {**good, "labels": [0, _Payload(marker)]}, "not-a-dict": [1, 2],
           "float-pixels": {**good, "data": np.zeros((2, 3072), np.float32)},
           "label-out-of-range": {**good, "labels": [0, 10]}, "missing-key": {"data": good["data"]}}
    if what == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.write_bytes(pickle.dumps(bad[what]))
    with pytest.warns(UserWarning), pytest.raises(ClrobustError) as info:
        load_dataset("cifar10", "test", str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and "re-extract the official archive" in msg, msg
    if what.startswith("payload"):
        assert "the global posix.system" in msg or "the global os.system" in msg, msg
    assert not marker.exists()


def test_cifar10_official_format(tmp_path):
    written = _write_cifar(tmp_path)
    with pytest.warns(UserWarning, match="differ from the official"):
        test = load_dataset("cifar10", "test", str(tmp_path))
    data, labels = written["test_batch"]
    assert test.labels.tolist() == labels
    assert torch.equal(test.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    with pytest.warns(UserWarning):
        train = load_dataset("cifar10", "train", str(tmp_path / "cifar-10-batches-py"))
    # The train split is data_batch_1 ... data_batch_5, in that order; rows are channel-major (R, G, B planes).
    batches = [written[f"data_batch_{i}"] for i in range(1, 6)]
    assert len(train) == 25 and train.labels.tolist() == sum((lab for _, lab in batches), [])
    rows = np.concatenate([d for d, _ in batches])
    assert torch.equal(train.images, torch.from_numpy(rows.reshape(-1, 3, 32, 32)))
    assert train.images[7, 1, 2, 3].item() == rows[7, 1024 + 2 * 32 + 3]  # green plane, row 2, column 3
    assert train.classes == test.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                             "ship", "truck"]
    assert (train.name, train.split, test.split) == ("cifar10", "train", "test")


def test_cifar100_official_format(tmp_path):
    written = _write_cifar(tmp_path, cifar100=True)
    with pytest.warns(UserWarning):
        train = load_dataset("cifar100", "train", str(tmp_path))
    assert train.labels.tolist() == written["train"][1] and train.num_classes == 100
    assert torch.equal(train.images, torch.from_numpy(written["train"][0].reshape(-1, 3, 32, 32)))
    assert train.classes == [f"c{i}" for i in range(100)]
    with pytest.warns(UserWarning):
        test = load_dataset("cifar100", "test", str(tmp_path))
    assert test.labels.tolist() == written["test"][1]
    assert torch.equal(test.images, torch.from_numpy(written["test"][0].reshape(-1, 3, 32, 32)))


def test_image_folder(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "test" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / "test" / cls / f"{i}.png")
    data = load_dataset("imagefolder", "test", str(tmp_path))
    assert data.images.shape == (4, 3, 32, 32) and data.classes == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 1, 1]
    assert data.images.dtype == torch.uint8 and data.images.flatten(1).amin(1).tolist() == [0, 60, 0, 60]
    assert data.images.flatten(1).amax(1).tolist() == [0, 60, 0, 60]  # a flat image stays flat when resized


def test_image_folder_pixels_crop_and_modes(tmp_path):
    """Flat layout (root/<class>/*), the shorter side resized then a centre crop, grey and RGBA made RGB."""
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    wide = np.zeros((32, 96, 3), np.uint8)
    wide[:, 32:64] = (200, 100, 50)  # the centre third: all a 32x32 centre crop keeps
    Image.fromarray(wide).save(tmp_path / "a" / "0-wide.png")
    Image.fromarray(np.full((64, 64), 90, np.uint8), mode="L").save(tmp_path / "a" / "1-grey.png")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "b" / "0-rgba.png")
    gradient = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 64, 3)).copy()
    Image.fromarray(gradient).save(tmp_path / "b" / "1-gradient.png")
    data = load_dataset("imagefolder", "train", str(tmp_path))  # no train/ folder: the root itself
    assert data.images.shape == (4, 3, 32, 32) and data.labels.tolist() == [0, 0, 1, 1] and data.split == "train"
    wide_img, grey, rgba_img, grad = data.images
    assert torch.equal(wide_img, torch.tensor([200, 100, 50], dtype=torch.uint8)[:, None, None].expand(3, 32, 32))
    assert (grey == 90).all()
    assert torch.equal(rgba_img, torch.tensor([10, 20, 30], dtype=torch.uint8)[:, None, None].expand(3, 32, 32))
    cols = grad[0, 16].int()  # 64 -> 32 columns: still increasing left to right, same in every row and channel
    assert (cols[1:] > cols[:-1]).all() and torch.equal(grad, grad[0, 16].expand(3, 32, 32))
    assert load_dataset("imagefolder", "test", str(tmp_path), image_size=16).images.shape == (4, 3, 16, 16)


def test_subset_and_batches():
    data = load_dataset("cifar10-mini", "test")
    sub = data.subset(10)
    assert torch.equal(sub.images, data.images[:10]) and torch.equal(sub.labels, data.labels[:10])
    assert (sub.name, sub.split, sub.classes) == (data.name, data.split, data.classes)
    assert data.subset(None) is data and data.subset(10_000) is data
    with pytest.raises(ClrobustError, match="at least 1"):
        data.subset(0)
    batches = list(sub.batches(4))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([x for x, _ in batches]), sub.images.float() / 255)
    assert torch.equal(torch.cat([y for _, y in batches]), sub.labels)


def test_a_fitted_set_of_a_class_ordered_split_holds_every_class(tmp_path):
    """An image folder lists its images class by class, so its first N would be a class or two: the images
    a job fits on (probes, training, training's evaluation) are a class-stratified N with sample seed 0
    there, and the first N where the split's order mixes its classes (the embedded set, CIFAR's files)."""
    from PIL import Image

    from clrobust.data import DataOptions, ImageData, SampledDataOptions, chosen_images, stratified_indices
    from clrobust.train import TrainConfig

    for c, cls in enumerate(("a", "b", "c")):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((32, 32, 3), 20 * c + i, np.uint8)).save(tmp_path / "train" / cls / f"{i}.png")
    folder = load_dataset("imagefolder", "train", str(tmp_path))
    assert folder.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and folder.class_ordered
    fixed = folder.fixed_subset(6)
    assert sorted(fixed.labels.tolist()) == [0, 0, 1, 1, 2, 2]  # the first 6: four a, two b, no c
    idx = torch.from_numpy(stratified_indices(folder.labels.numpy(), 6, 0))
    assert torch.equal(fixed.images, folder.images[idx]) and "class-stratified, sample seed 0" in fixed.chosen
    assert folder.fixed_subset(None) is folder and folder.fixed_subset(12) is folder
    # every job's fitted set comes through chosen_images, the trainer's settings too; no job seed changes it
    for settings in (DataOptions(data="imagefolder", data_root=str(tmp_path)),
                     SampledDataOptions(data="imagefolder", data_root=str(tmp_path), sample_seed=9),
                     TrainConfig(data="imagefolder", data_root=str(tmp_path), n_train=6, seed=5)):
        assert torch.equal(chosen_images(settings, "train", 6, sampled=False).images, fixed.images)
    with pytest.raises(TypeError, match="does not say how images are sampled"):
        chosen_images(DataOptions(data="imagefolder", data_root=str(tmp_path)), "train", 6)  # measured: drawn
    mini = load_dataset("cifar10-mini", "train")  # a mixed order: the first N, as before
    assert not mini.class_ordered and torch.equal(mini.fixed_subset(50).images, mini.images[:50])
    one = ImageData("x", "train", folder.images[:4], folder.labels[:4], folder.classes)  # one class: nothing to mix
    assert not one.class_ordered and torch.equal(one.fixed_subset(2).images, one.images[:2])
    mixed = ImageData("x", "train", folder.images[[0, 4, 1]], folder.labels[[0, 4, 1]], folder.classes)
    assert not mixed.class_ordered  # sorted but for one step back


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


def test_an_unreadable_image_is_named_and_skipped_only_when_asked(tmp_path):
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / cls / "good.png")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)  # a PNG signature, no image
    (tmp_path / "cat" / "text.jpg").write_text("not a jpeg")
    with pytest.raises(ClrobustError, match=r"^image '.*text\.jpg' cannot be read \(.*\); fix or remove it, "
                                            r"or pass --skip-bad-images to leave such files out\.$"):
        load_dataset("imagefolder", "test", str(tmp_path))
    with pytest.warns(UserWarning, match=r"left out 2 unreadable image\(s\) of .*: '.*text\.jpg', '.*broken\.png'"):
        data = load_dataset("imagefolder", "test", str(tmp_path), skip_bad=True)
    assert data.labels.tolist() == [0, 1] and data.images.shape == (2, 3, 32, 32)
    assert int(data.images.min()) == int(data.images.max()) == 90


def test_image_folder_resize_then_centre_crop(tmp_path):
    """--resize 64 --image-size 48 on a 64x128 image: the shorter side to 64 (no change), then the centre 48x48;
    checked against numpy slicing of the same pixels."""
    from PIL import Image

    (tmp_path / "x").mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x" / "0.png")
    data = load_dataset("imagefolder", "test", str(tmp_path), image_size=48, resize=64)
    want = pixels[8:56, 40:88].transpose(2, 0, 1)  # rows (64-48)/2, columns (128-48)/2
    assert torch.equal(data.images[0], torch.from_numpy(want.copy()))
    with pytest.raises(ClrobustError, match="--resize 40 is below --image-size 48"):
        load_dataset("imagefolder", "test", str(tmp_path), image_size=48, resize=40)
    with pytest.raises(ClrobustError, match="apply to --data imagefolder"):
        load_dataset("cifar10-mini", "test", image_size=64)


@pytest.mark.slow
def test_image_size_options_reach_every_job(tmp_path, tiny_checkpoints):
    """compare-layers on an image folder with --image-size 40 --resize 45 runs (a tiny CIFAR-stem network takes
    any size) and its settings record both."""
    import json
    import subprocess
    import sys

    from PIL import Image

    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / "test" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / "test" / cls / f"{i}.png")
    p = subprocess.run([sys.executable, "-m", "clrobust", "compare-layers", str(tiny_checkpoints[0]), "--data",
                        "imagefolder", "--data-root", str(tmp_path / "imgs"), "--image-size", "40", "--resize", "45",
                        "--n-samples", "12", "--batch-size", "6", "--steps", "1", "--layers", "stem,avgpool",
                        "--classifier", "probe", "--probe-train", "12", "--no-progress", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    settings = json.loads((tmp_path / "o" / "settings.json").read_text())
    assert settings["command"]["image_size"] == 40 and settings["command"]["resize"] == 45
