"""MATLAB ``.mat`` reader: v5 files with scipy.io, v7.3 (HDF5) files with h5py.

Benchmark ``.mat`` files carry no georeference; the catalog declares it. The array
is the one named by ``source.key``, or the only array in the file.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io
import xarray as xr

from pipeline.config.catalog import Source
from pipeline.config.errors import SourceError
from pipeline.data.sources._array import band_yx, choose_key, single_path, to_dataarray
from pipeline.storage import local_copy


def _variables(path: Path) -> tuple[list[str], bool]:
    """The array names in a .mat file and whether it is a v7.3 (HDF5) file."""
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            return [k for k, v in f.items() if isinstance(v, h5py.Dataset) and not k.startswith("#")], True
    return [name for name, _shape, _cls in scipy.io.whosmat(path)], False


def _load(path: Path, key: str, hdf5: bool) -> np.ndarray:
    if hdf5:
        with h5py.File(path, "r") as f:
            # MATLAB writes column-major: h5py sees the axes reversed.
            return np.asarray(f[key][()]).T
    return np.asarray(scipy.io.loadmat(path, variable_names=[key])[key])


def read_mat(source: Source, where: str) -> xr.DataArray:
    """Read one array of a .mat file as (band, y, x), without georeference."""
    path = single_path(source, where, ".mat file")
    if not path.is_file():
        raise SourceError(path, f"{where}.path", "an existing .mat file", "no such file")
    path = local_copy(path)  # a remote .mat file is fetched whole into the cache (HDF5/MATLAB need random access)
    try:
        names, hdf5 = _variables(path)
    except (ValueError, OSError, NotImplementedError, TypeError) as exc:
        raise SourceError(path, f"{where}.path", "a readable MATLAB .mat file", f"{type(exc).__name__}: {exc}") from None
    key = choose_key(path, where, source.key, names, "array", "file")
    try:
        array = _load(path, key, hdf5)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise SourceError(path, f"{where}.key", f"a readable array {key!r}", f"{type(exc).__name__}: {exc}") from None
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise SourceError(path, f"{where}.key", f"a numeric array under {key!r}", f"dtype {array.dtype}")
    try:
        data = band_yx(array, source.band_order)
    except ValueError as exc:
        raise SourceError(path, f"{where}.key", str(exc).split(",")[0], str(exc).split(", ", 1)[-1]) from None
    return to_dataarray(np.ascontiguousarray(data))
