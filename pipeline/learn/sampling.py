"""Which labelled pixels train, validate and test a model.

Training pixels are either the catalog's fixed training file (``labels.train``,
as Trento's ``TrLabel.mat``) or N pixels per class drawn with a seed, uniformly
or spatially balanced (``training.sampling``, :func:`spatially_balanced`). The
validation pixels (``training.held_out_fraction`` of them: by default only when
``selection: best`` picks the weights on them) come out of the training pool
only, so model selection never sees a test pixel. Test pixels are every other labelled pixel (or ``labels.test``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from pipeline.config.catalog import Labels, Training
from pipeline.config.errors import InputError
from pipeline.files import (
    atomic_file,
)


@dataclass
class Split:
    """Pixel positions (row, col) and class indices (0..K-1) of each part."""

    train_rows: np.ndarray
    train_cols: np.ndarray
    train_targets: np.ndarray
    val_rows: np.ndarray
    val_cols: np.ndarray
    val_targets: np.ndarray
    test_rows: np.ndarray
    test_cols: np.ndarray
    test_targets: np.ndarray

    def save(self, path: Path) -> Path:
        with atomic_file(path) as tmp, open(tmp, "wb") as stream:
            np.savez_compressed(stream, **self.__dict__)
        return path

    @classmethod
    def load(cls, path: Path) -> Split:
        with np.load(path) as data:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})

    def used_for_training(self, shape: tuple[int, int]) -> np.ndarray:
        """A boolean (y, x) mask of the train and validation pixels."""
        mask = np.zeros(shape, dtype=bool)
        mask[self.train_rows, self.train_cols] = True
        mask[self.val_rows, self.val_cols] = True
        return mask


def class_index_lookup(values: list[int]) -> np.ndarray:
    """A 256-entry table: class value -> class index, -1 for unlabelled or unknown values."""
    table = np.full(256, -1, dtype=np.int64)
    for i, v in enumerate(values):
        table[v] = i
    return table


def z_order(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Morton (Z-order) codes of pixel positions: nearby pixels get nearby codes, mostly."""
    code = np.zeros(rows.shape, dtype=np.uint64)
    r, c = rows.astype(np.uint64), cols.astype(np.uint64)
    for bit in range(32):
        b = np.uint64(bit)
        code |= ((c >> b) & np.uint64(1)) << np.uint64(2 * bit)
        code |= ((r >> b) & np.uint64(1)) << np.uint64(2 * bit + 1)
    return code


def spatially_balanced(rows: np.ndarray, cols: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` of the pixels (``rows``, ``cols``), spread over their extent, in random order.

    The pixels are put in Z-order and cut into ``n`` strata of (nearly) equal
    size; one pixel is drawn uniformly from each, so every pixel has the same
    chance as under a uniform draw, but no stretch of the class is left out or
    sampled twice by luck (the idea of GRTS survey designs). A uniform draw of
    100 pixels a class moved a row's OA by up to 2.6 points between splits on
    the MUUFL benchmark scene, training held (docs/accuracy.md).
    """
    if n >= rows.size:
        return rng.permutation(rows.size)
    order = np.argsort(z_order(rows, cols), kind="stable")
    bounds = (np.arange(n + 1) * rows.size) // n
    picks = bounds[:-1] + (rng.random(n) * np.diff(bounds)).astype(np.int64)
    return rng.permutation(order[picks])


def _per_class_counts(training: Training, names: list[str], catalog_path: Path | None) -> list[int | None]:
    spc = training.samples_per_class
    if spc is None:
        return [None] * len(names)
    if isinstance(spc, int):
        return [spc] * len(names)
    unknown = sorted(set(spc) - set(names))
    if unknown:
        raise InputError(catalog_path, "training.samples_per_class", f"class names among {names}", f"{unknown}")
    return [spc.get(n) for n in names]


def make_split(
    scene: xr.Dataset,
    labels_cfg: Labels,
    training: Training,
    seed: int,
    catalog_path: Path | None = None,
) -> Split:
    """Draw the train/validation/test pixels of a scene store (labels read whole: uint8, one byte a pixel)."""
    values = [c.value for c in labels_cfg.classes]
    names = [c.name for c in labels_cfg.classes]
    lookup = class_index_lookup(values)
    rng = np.random.default_rng(seed)

    if "train_labels" in scene:
        pool = scene["train_labels"].values
    elif "labels" in scene:
        pool = scene["labels"].values
    else:
        raise InputError(catalog_path, "scenes[].labels", "a labels source to train from", "none in the scene store")
    pool_idx = lookup[pool]
    counts = _per_class_counts(training, names, catalog_path)

    train_r, train_c, val_r, val_c = [], [], [], []
    for k in range(len(values)):
        rr, cc = np.nonzero(pool_idx == k)
        if rr.size == 0:
            continue
        wanted = counts[k]
        n = min(wanted if wanted is not None and "train_labels" not in scene else rr.size, rr.size)
        chosen = spatially_balanced(rr, cc, n, rng) if training.sampling == "spatial" else rng.permutation(rr.size)[:n]
        fraction = training.held_out_fraction
        n_val = int(round(len(chosen) * fraction))
        if len(chosen) >= 2:
            n_val = min(max(n_val, 1 if fraction > 0 else 0), len(chosen) - 1)
        else:
            n_val = 0
        val_r.append(rr[chosen[:n_val]])
        val_c.append(cc[chosen[:n_val]])
        train_r.append(rr[chosen[n_val:]])
        train_c.append(cc[chosen[n_val:]])
    if not train_r:
        raise InputError(catalog_path, "scenes[].labels", f"labelled pixels of classes {values}", "none in the scene")

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    tr_r, tr_c, va_r, va_c = cat(train_r), cat(train_c), cat(val_r), cat(val_c)
    used = np.zeros(pool.shape, dtype=bool)
    used[tr_r, tr_c] = True
    used[va_r, va_c] = True

    test_source = scene["test_labels"].values if "test_labels" in scene else scene["labels"].values
    test_idx = lookup[test_source]
    te_r, te_c = np.nonzero((test_idx >= 0) & ~used)
    return Split(
        train_rows=tr_r, train_cols=tr_c, train_targets=lookup[pool[tr_r, tr_c]],
        val_rows=va_r, val_cols=va_c, val_targets=lookup[pool[va_r, va_c]],
        test_rows=te_r, test_cols=te_c, test_targets=test_idx[te_r, te_c],
    )
