"""The official CIFAR-10 / CIFAR-100 python batches, read without running code.

The batches are pickles. A pickle can name any importable callable, so a planted
batch file could run code under a plain ``pickle.load``. :class:`BatchUnpickler`
admits only what the official files contain (dicts, lists, str, bytes, ints and
numpy uint8 arrays) and refuses anything else with the global it asked for.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from clrobust.errors import ClrobustError

#: (module, name) pairs a CIFAR batch may reference: numpy's array reconstruction only.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at pickle protocol 2
}
#: The official files are under 200 MB each; a larger "batch" is refused before reading.
MAX_BATCH_BYTES = 512 * 2 ** 20


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it asks for the global {module}.{name}, which no CIFAR batch contains")


def read_batch(path: Path) -> Dict[str, Any]:
    """One batch file as a dict with str keys; refused (ClrobustError) if it needs anything else."""
    size = path.stat().st_size
    if size > MAX_BATCH_BYTES:
        raise ClrobustError(f"{str(path)!r} is {size / 2 ** 20:.0f} MB, larger than any CIFAR batch; "
                            "re-extract the official archive.")
    try:
        obj = BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as exc:  # refused global, truncated or not a pickle
        raise ClrobustError(f"refused to read {str(path)!r}: {exc}; re-extract the official archive.") from None
    if not isinstance(obj, dict):
        raise ClrobustError(f"{str(path)!r} holds a {type(obj).__name__}, not a CIFAR batch (a dict); "
                            "re-extract the official archive.")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(batch: Dict[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        raise ClrobustError(f"{str(path)!r} has no {key!r} entry (keys: {', '.join(sorted(batch))}); "
                            "re-extract the official archive.")
    return batch[key]


def read_split(folder: Path, files: List[str], meta_file: str, cifar100: bool
               ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Images (N, 3, 32, 32) uint8, labels (N,) int64 and class names from the batch files of one split."""
    label_key = "fine_labels" if cifar100 else "labels"
    xs, ys = [], []
    for f in files:
        path = folder / f
        batch = read_batch(path)
        data = np.asarray(_field(batch, "data", path))
        labels = np.asarray(_field(batch, label_key, path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise ClrobustError(f"{str(path)!r}: expected uint8 rows of 3072 pixels and one label each, got "
                                f"{data.dtype} {data.shape} and {len(labels)} labels; re-extract the official archive.")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    meta = read_batch(folder / meta_file)
    names = [str(n) for n in _field(meta, "fine_label_names" if cifar100 else "label_names", folder / meta_file)]
    y = np.concatenate(ys)
    if len(y) and (y.min() < 0 or y.max() >= len(names)):
        raise ClrobustError(f"labels under {str(folder)!r} lie outside 0..{len(names) - 1}; "
                            "re-extract the official archive.")
    return np.ascontiguousarray(np.concatenate(xs)), y, names
