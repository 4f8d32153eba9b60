"""The layout of the stores the pipeline writes, in one place.

Scene store (``<output.folder>/<scene>/scene.zarr``, Zarr v3, written by ingest)::

    <modality>      float32 (band_<modality>, y, x)   NaN where the sensor has no value
    band_<m>        int coordinate 1..C
    wavelength_<m>  float coordinate along band_<m>, nanometres (NaN when unknown)
    available       bool (modality, y, x)             per-modality availability
    modality        str coordinate, the modality names in catalog order
    labels          uint8 (y, x)                      0 = unlabelled, else the class value
    train_labels, test_labels   uint8 (y, x)          only when the catalog gives fixed splits
    y, x            pixel-centre coordinates in CRS units
    spatial_ref     rioxarray's CRS coordinate

    attrs: crs (e.g. "EPSG:32632"), transform (6 affine coefficients a, b, c, d, e, f),
           classes [{value, name, color, description}], modalities [{name, kind, bands, acquired, nodata}],
           content_hash, scene, tile_size, pipeline_version

Either store may be on an object store (``s3://.../scene.zarr``): it is complete when its
``<store>.complete`` marker exists (see :mod:`pipeline.storage`).

Chunks: every band of a modality in one chunk, ``tile_size`` x ``tile_size`` in (y, x).

Map store (``<output.folder>/<scene>/map.zarr``, written tile by tile by mapping)::

    class       uint8 (y, x)    class value; CLASS_NODATA where no modality was available
    confidence  float32 (y, x)  max softmax probability; NaN where nodata
    pattern     uint8 (y, x)    availability pattern used: bit i set when modality i was available

Pattern codes: see :mod:`models.patterns` (bit i set when modality i, catalog order, is
available; 0 means nothing was available).
"""

from __future__ import annotations

from pipeline.storage import Location, as_location

CLASS_NODATA = 0
PATTERN_NODATA = 0


def scene_store_path(output_folder: Location, scene: str) -> Location:
    return as_location(output_folder) / scene / "scene.zarr"


def map_store_path(output_folder: Location, scene: str) -> Location:
    return as_location(output_folder) / scene / "map.zarr"


def band_dim(modality: str) -> str:
    return f"band_{modality}"


def wavelength_coord(modality: str) -> str:
    return f"wavelength_{modality}"
