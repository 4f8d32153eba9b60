"""Patches around pixels, read window by window from a scene store.

A pixel is classified from the P x P patch centred on it, in every modality.
Values are normalised per band with the training statistics; a neighbour whose
modality is unavailable there (nodata, cloud, failure, or outside the scene)
is zero-filled, and the pixel's availability pattern is that of its centre.
Reading goes by windows (a tile plus a halo of P // 2), so memory follows the
window, never the scene.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import xarray as xr
import zarr
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.config.errors import InputError
from pipeline.data.store import band_dim


@dataclass(frozen=True)
class Window:
    """A rectangle of the scene grid in pixels: rows [row, row + height), cols [col, col + width)."""

    row: int
    col: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)


@dataclass
class NormStats:
    """Per-band mean and standard deviation of each modality, from training pixels."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        return {m: {"mean": self.mean[m].tolist(), "std": self.std[m].tolist()} for m in self.mean}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, list[float]]]) -> NormStats:
        return cls(
            mean={m: np.asarray(v["mean"], dtype=np.float32) for m, v in data.items()},
            std={m: np.asarray(v["std"], dtype=np.float32) for m, v in data.items()},
        )


@dataclass
class WindowData:
    """A window with its halo: values per modality (C, H, W), availability (M, H, W)."""

    values: dict[str, np.ndarray]
    available: np.ndarray
    halo: int


def read_window(ds: xr.Dataset, modalities: list[str], window: Window, halo: int) -> WindowData:
    """Read ``window`` grown by ``halo`` pixels on each side; outside the scene is NaN and unavailable."""
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    r0, r1 = window.row - halo, window.row + window.height + halo
    c0, c1 = window.col - halo, window.col + window.width + halo
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, ny), max(c0, 0), min(c1, nx)
    pad = ((rr0 - r0, r1 - rr1), (cc0 - c0, c1 - cc1))
    region = {"y": slice(rr0, rr1), "x": slice(cc0, cc1)}
    values: dict[str, np.ndarray] = {}
    for name in modalities:
        block = read_region(ds, name, region).transpose(band_dim(name), "y", "x").values
        values[name] = np.pad(block.astype(np.float32, copy=False), ((0, 0), *pad), constant_values=np.nan)
    avail = read_region(ds, "available", region).sel(modality=modalities).values
    available = np.pad(avail.astype(bool, copy=False), ((0, 0), *pad), constant_values=False)
    return WindowData(values=values, available=available, halo=halo)


def read_region(ds: xr.Dataset, variable: str, region: dict[str, slice]) -> xr.DataArray:
    """``ds[variable]`` over ``region`` (dim -> slice), loaded; an unreadable chunk of the store is an
    :class:`InputError` naming the store, the variable and the chunk's key."""
    try:
        return ds[variable].isel(region).load()
    except Exception as exc:  # noqa: BLE001 - codecs raise RuntimeError, ValueError...: locate the chunk, else re-raise
        bad = unreadable_chunk(ds, variable, region)
        if bad is None:
            raise
        key, error = bad
        raise InputError(ds.encoding.get("source"), f"{variable} chunk {key}", "a readable chunk", error) from exc


def unreadable_chunk(ds: xr.Dataset, variable: str, region: dict[str, slice]) -> tuple[str, str] | None:
    """The key and error of the first chunk of ``variable`` under ``region`` that cannot be decoded,
    read one chunk at a time from the Zarr store ``ds`` was opened from; None when every chunk reads."""
    source = ds.encoding.get("source")
    if source is None:
        return None
    try:
        array = zarr.open_array(source, path=variable, mode="r")
    except (OSError, ValueError, KeyError):
        return None
    dims = ds[variable].dims
    ranges = []
    for dim, size, chunk in zip(dims, array.shape, array.chunks):
        sl = region.get(str(dim), slice(0, size))
        start, stop, _ = sl.indices(size)
        ranges.append(range(start // chunk, max(start, stop - 1) // chunk + 1))
    for coords in itertools.product(*ranges):
        try:
            array.get_block_selection(coords)
        except Exception as exc:  # noqa: BLE001 - the decoder's error is reported in the InputError
            return array.metadata.encode_chunk_key(coords), f"{type(exc).__name__}: {exc}"
    return None


def normalise_window(data: WindowData, modalities: list[str], stats: NormStats) -> dict[str, np.ndarray]:
    """Normalised values with unavailable positions (and NaN) set to zero, per modality (C, H, W)."""
    out = {}
    for i, name in enumerate(modalities):
        v = data.values[name]
        mean = stats.mean[name][:, None, None]
        std = stats.std[name][:, None, None]
        z = (v - mean) / std
        z = np.where(data.available[i][None] & np.isfinite(z), z, 0.0).astype(np.float32)
        out[name] = z
    return out


def extract_patches(
    normalised: dict[str, np.ndarray],
    available: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    patch_size: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Patches (N, C, P, P) centred on window-local ``rows``/``cols`` (indices into the halo'd arrays
    minus the halo), and the centre availability (N, M)."""
    half = patch_size // 2
    patches = {}
    for name, z in normalised.items():
        view = sliding_window_view(z, (patch_size, patch_size), axis=(1, 2))  # (C, H-2h, W-2h, P, P)
        patches[name] = np.ascontiguousarray(view[:, rows, cols].transpose(1, 0, 2, 3))
    centre = available[:, rows + half, cols + half].T.copy()
    return patches, centre


def pixel_windows(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], tile_size: int) -> Iterator[tuple[Window, np.ndarray]]:
    """Group scene pixels by the tile they fall in: yields (tile window, indices into rows/cols)."""
    tile_r = rows // tile_size
    tile_c = cols // tile_size
    order = np.lexsort((tile_c, tile_r))
    keys = tile_r[order] * (shape[1] // tile_size + 1) + tile_c[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    for group in np.split(order, bounds):
        if group.size == 0:
            continue
        tr, tc = int(tile_r[group[0]]), int(tile_c[group[0]])
        r0, c0 = tr * tile_size, tc * tile_size
        window = Window(r0, c0, min(tile_size, shape[0] - r0), min(tile_size, shape[1] - c0))
        yield window, group


def patches_at(
    ds: xr.Dataset,
    modalities: list[str],
    rows: np.ndarray,
    cols: np.ndarray,
    patch_size: int,
    stats: NormStats,
    tile_size: int = 128,
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]]:
    """Patches for scattered scene pixels, read tile by tile: yields (indices, patches, centre availability)."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    shape = (ds.sizes["y"], ds.sizes["x"])
    half = patch_size // 2
    for window, idx in pixel_windows(rows, cols, shape, tile_size):
        data = read_window(ds, modalities, window, half)
        norm = normalise_window(data, modalities, stats)
        patches, centre = extract_patches(norm, data.available, rows[idx] - window.row, cols[idx] - window.col, patch_size)
        yield idx, patches, centre


def gather_patches(
    ds: xr.Dataset,
    modalities: list[str],
    rows: np.ndarray,
    cols: np.ndarray,
    patch_size: int,
    stats: NormStats,
    tile_size: int = 128,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All patches for a modest set of pixels (training samples), in the order of ``rows``/``cols``."""
    n = len(rows)
    bands = {m: ds.sizes[band_dim(m)] for m in modalities}
    out = {m: np.zeros((n, bands[m], patch_size, patch_size), dtype=np.float32) for m in modalities}
    centre = np.zeros((n, len(modalities)), dtype=bool)
    for idx, patches, avail in patches_at(ds, modalities, rows, cols, patch_size, stats, tile_size):
        for m in modalities:
            out[m][idx] = patches[m]
        centre[idx] = avail
    return out, centre


def compute_norm_stats(ds: xr.Dataset, modalities: list[str], rows: np.ndarray, cols: np.ndarray) -> NormStats:
    """Per-band mean/std over the given pixels where the modality is available (std floored to avoid /0)."""
    mean, std = {}, {}
    r = xr.DataArray(np.asarray(rows), dims="sample")
    c = xr.DataArray(np.asarray(cols), dims="sample")
    for _i, name in enumerate(modalities):
        vals = ds[name].isel(y=r, x=c).transpose("sample", band_dim(name)).values.astype(np.float64)
        ok = ds["available"].sel(modality=name).isel(y=r, x=c).values & np.isfinite(vals).all(axis=1)
        if not ok.any():
            # No training pixel sees this modality: fall back to the whole scene, read lazily by dask.
            arr = ds[name].where(ds["available"].sel(modality=name))
            m = arr.mean(dim=("y", "x"), skipna=True).values
            s = arr.std(dim=("y", "x"), skipna=True).values
        else:
            m = vals[ok].mean(axis=0)
            s = vals[ok].std(axis=0)
        m = np.nan_to_num(m, nan=0.0)
        s = np.nan_to_num(s, nan=1.0)
        mean[name] = m.astype(np.float32)
        std[name] = np.maximum(s, 1e-6 + 1e-3 * np.abs(m)).astype(np.float32)
    return NormStats(mean=mean, std=std)
