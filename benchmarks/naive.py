"""The naive reference: per-pixel patches cut in Python and fed through a DataLoader.

This is how the public HS + LiDAR classification repositories map a scene: the
whole scene is loaded and normalised in memory and padded by half a patch; a
``Dataset`` cuts the patch of one pixel per ``__getitem__`` with numpy slicing;
a ``DataLoader`` (batch 64, no worker processes) collates them for the model.
Same model, same weights and same normalisation as the tiled engine, so on the
same pixels it must predict the same classes (checked by the tests); only the
data path and the batching differ.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch.utils.data import DataLoader, Dataset

from models.base import MissingModalityClassifier
from pipeline.data.patches import NormStats
from pipeline.data.store import band_dim


@dataclass
class InMemoryScene:
    """Normalised modalities (C, H + 2h, W + 2h) and availability (M, H + 2h, W + 2h), zero-padded by ``half``."""

    normalised: dict[str, np.ndarray]
    available: np.ndarray
    half: int


def load_scene(scene_store: Path, modalities: list[str], stats: NormStats, patch_size: int) -> InMemoryScene:
    """Read the whole scene into memory, normalise it and pad it, as the public repositories do."""
    ds = xr.open_zarr(scene_store, chunks=None)
    half = patch_size // 2
    pad = ((0, 0), (half, half), (half, half))
    available = np.pad(ds["available"].sel(modality=modalities).values.astype(bool), pad, constant_values=False)
    normalised = {}
    for i, name in enumerate(modalities):
        values = ds[name].transpose(band_dim(name), "y", "x").values.astype(np.float32)
        z = (np.pad(values, pad, constant_values=np.nan) - stats.mean[name][:, None, None]) / stats.std[name][:, None, None]
        normalised[name] = np.where(available[i][None] & np.isfinite(z), z, 0.0).astype(np.float32)
    return InMemoryScene(normalised, available, half)


class PixelPatches(Dataset):
    """One item per pixel: its patch in every modality and its centre availability."""

    def __init__(self, scene: InMemoryScene, rows: np.ndarray, cols: np.ndarray, patch_size: int) -> None:
        self.scene, self.rows, self.cols, self.patch_size = scene, np.asarray(rows), np.asarray(cols), patch_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        r, c, p = int(self.rows[i]), int(self.cols[i]), self.patch_size
        patches = {m: torch.from_numpy(z[:, r : r + p, c : c + p].copy()) for m, z in self.scene.normalised.items()}
        h = self.scene.half
        return patches, torch.from_numpy(self.scene.available[:, r + h, c + h].copy())


@torch.no_grad()
def classify_pixels(model: MissingModalityClassifier, dataset: Dataset, batch_size: int = 64,
                    dtype: torch.dtype | None = None, device: torch.device | None = None) -> tuple[np.ndarray, float]:
    """Class indices (argmax) for every item of ``dataset`` and the seconds the loop took (batches moved to ``device``)."""
    device = device or torch.device("cpu")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    out = []
    started = time.perf_counter()
    with autocast:
        for patches, available in loader:
            logits = model({m: v.to(device) for m, v in patches.items()}, available.to(device))
            out.append(logits.float().argmax(dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64), time.perf_counter() - started
