"""Data sets as in-memory uint8 tensors: the embedded CIFAR-10 subset, CIFAR-10/100 and image folders.

Every loader returns an :class:`ImageData`; images stay uint8 (N, 3, H, W) until a
batch is taken, so a whole CIFAR split costs 150 MB, not 600.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from clrobust.errors import ClrobustError

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
#: Mean and std of the CIFAR-10 training set, the normalisation of the zoo's models.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

from clrobust.names import DATASETS, SAMPLINGS, SPLITS  # noqa: E402  (the one list, torch-free for the CLI)


@dataclass
class ImageData:
    """Images (uint8, N x 3 x H x W) with integer labels."""

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: List[str]
    #: how these images were chosen from the split, in words (``sample`` fills it in)
    chosen: str = "all images of the split"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, n: Optional[int]) -> "ImageData":
        """The first ``n`` images (all of them when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ClrobustError(f"--n-samples must be at least 1, got {n}.")
        return ImageData(self.name, self.split, self.images[:n], self.labels[:n], self.classes,
                         f"the first {n} of the {len(self)} in the split")

    @property
    def class_ordered(self) -> bool:
        """Whether the split lists its images class by class (an image folder does), so that its first
        images are of one or a few classes."""
        y = self.labels
        return len(y) > 1 and int(y[0]) != int(y[-1]) and bool((y[1:] >= y[:-1]).all())

    def fixed_subset(self, n: Optional[int]) -> "ImageData":
        """``n`` images that no job seed changes (the images a job fits on; training's evaluation images):
        the first ``n`` where the split's order mixes its classes (the embedded set, CIFAR's files), but a
        class-stratified ``n`` with sample seed 0 where it lists them class by class (an image folder),
        whose first ``n`` would be of a few classes only."""
        if self.class_ordered:
            return self.sample(n, "stratified", seed=0)
        return self.subset(n)

    def sample(self, n: Optional[int], sampling: str = "stratified", seed: int = 0) -> "ImageData":
        """``n`` images of the split: a seeded class-stratified random subset (each class in proportion
        to its share, kept in the split's order) or the first ``n`` (``sampling="first"``).
        All of them when ``n`` is None or at least the split's size.

        Raises:
            ClrobustError: an unknown ``sampling`` or ``n`` below 1.
        """
        if sampling not in SAMPLINGS:
            raise ClrobustError(f"unknown sampling {sampling!r}; use one of: {', '.join(SAMPLINGS)}.")
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ClrobustError(f"--n-samples must be at least 1, got {n}.")
        if sampling == "first":
            return self.subset(n)
        idx = stratified_indices(self.labels.numpy(), n, seed)
        digest = hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest()[:12]
        t = torch.from_numpy(idx)
        return ImageData(self.name, self.split, self.images[t], self.labels[t], self.classes,
                         f"{n} of the {len(self)} in the split, class-stratified, sample seed {seed}, "
                         f"indices sha256 {digest}")

    def fingerprint(self) -> str:
        """SHA-256 of the pixels and labels, in order: which images these are, whatever folder,
        split or subset they came from (caches are keyed by it)."""
        h = hashlib.sha256()
        h.update(repr((tuple(self.images.shape), str(self.images.dtype))).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.to(torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Float batches in [0, 1] with their labels, in order."""
        for i in range(0, len(self), batch_size):
            yield to_float(self.images[i:i + batch_size]), self.labels[i:i + batch_size]


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` of ``labels``: every class gets its share of ``n`` (largest remainders
    first, ties to the lower class), drawn uniformly within the class by a generator seeded by ``seed``."""
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = n * counts / counts.sum()
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A3E]))
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


@dataclass(kw_only=True)
class DataOptions:
    """What every job's settings say about its data: the data set, and how an image folder is read.

    The settings of each command inherit these fields (keyword-only, after the command's own);
    the CLI's ``data_options`` fills them from ``--data ... --resize``.
    """

    data: str = "cifar10-mini"
    data_root: Optional[str] = None
    skip_bad_images: bool = False
    image_size: int = 32  # image folders: side of the centre crop
    resize: Optional[int] = None  # image folders: shorter side before the crop [image_size]


@dataclass(kw_only=True)
class SampledDataOptions(DataOptions):
    """... and, for the images a job measures on, how they are drawn from the split."""

    sampling: str = "stratified"  # how --n-samples images are chosen: stratified or first
    sample_seed: int = 0


def data_fields(s: DataOptions) -> Dict[str, Any]:
    """The data fields of a job's settings (those of :class:`SampledDataOptions` where it has them), in the
    order the fields are declared: the shared part of every ``settings.json``."""
    base = SampledDataOptions if isinstance(s, SampledDataOptions) else DataOptions
    return {f.name: getattr(s, f.name) for f in fields(base)}


def chosen_images(s: DataOptions, split: str, n: Optional[int], sampled: bool = True) -> ImageData:
    """The images a job's settings name: ``n`` of ``split`` drawn by the settings' ``sampling`` and
    ``sample_seed`` (the images measured on), or (``sampled=False``: images fitted on) the same ``n`` for
    every seed, :meth:`ImageData.fixed_subset`."""
    images = load_dataset(s.data, split, s.data_root, skip_bad=s.skip_bad_images,
                          image_size=s.image_size, resize=s.resize)
    if not sampled:
        return images.fixed_subset(n)
    if not isinstance(s, SampledDataOptions):
        raise TypeError(f"{type(s).__name__} does not say how images are sampled (no SampledDataOptions)")
    return images.sample(n, s.sampling, s.sample_seed)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1]."""
    return images.float().div_(255.0)


def embedded_path() -> Path:
    """Path of the CIFAR-10 subset that ships inside the package."""
    return Path(str(resources.files("clrobust.data").joinpath("cifar10_mini.npz")))


def load_dataset(name: str = "cifar10-mini", split: str = "test", root: Optional[str] = None,
                 image_size: int = 32, skip_bad: bool = False, resize: Optional[int] = None) -> ImageData:
    """Load a data set by name.

    Args:
        name: ``cifar10-mini`` (embedded), ``cifar10`` or ``cifar100`` (official
            python-format folders under ``root``, never downloaded) or
            ``imagefolder`` (``root/<split>/<class>/*.png`` or ``root/<class>/*``).
        split: ``train`` or ``test``.
        root: folder for the non-embedded data sets.
        image_size: side of the square centre crop of image folders.
        resize: image folders: the shorter side is resized to this first [``image_size``].
        skip_bad: leave out image-folder files that cannot be read as images (each one
            named in a warning) instead of stopping at the first.

    Raises:
        ClrobustError: unknown name or split, missing or empty folder, an unreadable
            image (named) unless ``skip_bad``.
    """
    if split not in SPLITS:
        raise ClrobustError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}.")
    if name != "imagefolder" and (image_size != 32 or resize is not None):
        raise ClrobustError(f"--image-size and --resize apply to --data imagefolder; {name} images are 32x32 "
                            "(drop them).")
    if resize is not None and resize < image_size:
        raise ClrobustError(f"--resize {resize} is below --image-size {image_size}: the crop would not fit; "
                            f"use a --resize of at least {image_size}.")
    if name == "cifar10-mini":
        return _load_mini(split)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, split, root)
    if name == "imagefolder":
        return _load_folder(split, root, image_size, skip_bad, resize)
    raise ClrobustError(f"unknown data set {name!r}; use one of: {', '.join(DATASETS)}.")


def _load_mini(split: str) -> ImageData:
    with np.load(embedded_path()) as z:
        x, y = z[f"x_{split}"], z[f"y_{split}"]
    return ImageData("cifar10-mini", split, torch.from_numpy(x), torch.from_numpy(y).long(),
                     list(CIFAR10_CLASSES))


def _require_root(name: str, root: Optional[str]) -> Path:
    if root is None:
        raise ClrobustError(f"data set {name!r} needs --data-root pointing at its folder "
                            "(nothing is downloaded).")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ClrobustError(f"--data-root {root!r} is not a folder.")
    return path


def _load_cifar(name: str, split: str, root: Optional[str]) -> ImageData:
    import warnings

    from torchvision import datasets

    path = _require_root(name, root)
    cls: Any = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = cls.base_folder
    if not (path / folder).is_dir() and path.name == folder:
        path = path.parent  # accept the extracted folder itself as the root
    files = [f for f, _ in (cls.train_list if split == "train" else cls.test_list)] + [cls.meta["filename"]]
    missing = [f for f in files if not (path / folder / f).is_file()]
    if missing:
        raise ClrobustError(f"{name} not found under {str(path)!r}: expected the official python version "
                            f"({folder}/ with {', '.join(files)}); missing {', '.join(missing)}.")

    from torchvision.datasets.utils import check_integrity

    listed = cls.train_list if split == "train" else cls.test_list
    if not all(check_integrity(str(path / folder / f), md5) for f, md5 in listed):
        warnings.warn(f"{name} files under {path} differ from the official release (md5); "
                      "using them as they are.", stacklevel=3)

    from clrobust.data.cifar import read_split

    x, y, classes = read_split(path / folder, [f for f, _ in listed], cls.meta["filename"], name == "cifar100")
    return ImageData(name, split, torch.from_numpy(x), torch.from_numpy(y), classes)


def _load_folder(split: str, root: Optional[str], image_size: int, skip_bad: bool = False,
                 resize: Optional[int] = None) -> ImageData:
    import warnings

    from PIL import Image
    from torchvision import datasets, transforms

    path = _require_root("imagefolder", root)
    if (path / split).is_dir():
        path = path / split
    tf = transforms.Compose([transforms.Resize(resize or image_size), transforms.CenterCrop(image_size),
                             transforms.PILToTensor()])
    try:
        ds = datasets.ImageFolder(str(path), transform=tf, allow_empty=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ClrobustError(f"no images found in {str(path)!r}: expected one sub-folder per "
                            f"class holding image files ({exc}).") from None
    if len(ds) == 0:
        raise ClrobustError(f"image folder {str(path)!r} is empty: expected one sub-folder per class holding "
                            "image files (.png, .jpg ...).")
    xs, ys, bad = [], [], []
    for file, label in ds.samples:
        try:
            with Image.open(file) as im:
                im.load()
                t = tf(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # PIL's unreadable-image errors
            if not skip_bad:
                raise ClrobustError(f"image {file!r} cannot be read ({' '.join(str(exc).split())[:150]}); "
                                    "fix or remove it, or pass --skip-bad-images to leave such files out.") from None
            bad.append(file)
            continue
        xs.append(t)
        ys.append(label)
    if bad:
        shown = ", ".join(repr(b) for b in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        warnings.warn(f"left out {len(bad)} unreadable image(s) of {str(path)!r}: {shown}.", stacklevel=3)
    if not xs:
        raise ClrobustError(f"image folder {str(path)!r} holds no readable image ({len(bad)} unreadable).")
    x = torch.stack(xs)
    return ImageData("imagefolder", split, x, torch.as_tensor(ys, dtype=torch.long), list(ds.classes))
