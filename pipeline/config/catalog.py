"""The YAML catalog: what a user declares about scenes, model, output and cluster.

The catalog is validated with pydantic. Every section forbids unknown keys, so a
misspelt key is an error that names the file and the key. Relative paths are
resolved against the folder of the catalog file, also when the catalog itself is a
URL. Any path may be a URL (``s3://bucket/key``, ``gs://``, ``az://``, ``https://``
for inputs); URLs become :class:`upath.UPath` locations carrying the ``storage``
section's options (see :mod:`pipeline.storage`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from upath import UPath

from pipeline.config.errors import CatalogError
from pipeline.config.limits import MAX_CATALOG_BYTES, MAX_CATALOG_NODES, expanded_nodes
from pipeline.config.params import check_dense_crops, check_model_params
from pipeline.storage import (
    CREDENTIAL_KEYS,
    READ_ONLY_SCHEMES,
    Location,
    as_location,
    is_remote,
    local_path,
    resolve_against,
)


def _location(value: Any) -> Location:
    if isinstance(value, (str, Path, UPath)):
        return as_location(value)
    raise ValueError(f"a path or a URL, not {type(value).__name__}")


#: A catalog path: a local path (resolved against the catalog's folder) or a URL.
PathOrURL = Annotated[
    Any,  # Path | UPath
    PlainValidator(_location),
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "description": "a path (relative to the catalog) or a URL"}),
]

ModalityKind = Literal["hs", "lidar", "sar", "msi"]
SourceFormat = Literal["geotiff", "envi", "mat", "zarr"]
OPTICAL_KINDS: tuple[str, ...] = ("hs", "msi")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Georeference(_Section):
    """A georeference declared for sources that carry none (benchmark ``.mat`` files).

    ``origin`` is the map coordinate of the upper-left corner of the upper-left
    pixel, ``resolution`` the pixel size in CRS units (square pixels, north up).
    """

    crs: str
    origin: tuple[float, float]
    resolution: float = Field(gt=0)


class Source(_Section):
    """Where a raster lives and how to read it.

    ``path`` is one file (or a Zarr store); ``paths`` is one single-band file per
    band, in band order. ``key`` names the array in a ``.mat`` file or the
    variable in a Zarr store; when absent the reader takes the only array.
    ``band_order`` says whether a 3-D ``.mat`` array is (y, x, band),
    (band, y, x) or to be guessed from the shape (``auto``).
    """

    path: PathOrURL | None = None
    paths: list[PathOrURL] | None = None
    format: SourceFormat = "geotiff"
    key: str | None = None
    band_order: Literal["auto", "yxb", "byx"] = "auto"

    @model_validator(mode="after")
    def _one_of_path_paths(self) -> Source:
        if (self.path is None) == (self.paths is None):
            raise ValueError("give exactly one of 'path' (one file) or 'paths' (one file per band)")
        return self

    @property
    def files(self) -> list[Location]:
        return [self.path] if self.path is not None else list(self.paths or [])


class Modality(_Section):
    name: str
    kind: ModalityKind
    source: Source
    wavelengths: list[float] | None = Field(default=None, description="band centres in nanometres")
    band_names: list[str] | None = None
    nodata: float | None = None
    acquired: dt.datetime | None = Field(default=None, description="acquisition time, for time-window failures")
    georeference: Georeference | None = None

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", v):
            raise ValueError(f"modality name {v!r} must be lower-case letters, digits and '_', starting with a letter")
        if v in ("labels", "available", "train_labels", "test_labels", "spatial_ref"):
            raise ValueError(f"modality name {v!r} is reserved")
        return v


class Grid(_Section):
    """The scene grid: either taken from one modality, or declared (CRS, resolution, bounds)."""

    from_modality: str | None = None
    crs: str | None = None
    resolution: float | None = Field(default=None, gt=0)
    bounds: tuple[float, float, float, float] | None = Field(default=None, description="left, bottom, right, top")

    @model_validator(mode="after")
    def _complete(self) -> Grid:
        declared = (self.crs, self.resolution, self.bounds)
        if self.from_modality is None and any(v is None for v in declared):
            raise ValueError("give 'from_modality', or all of 'crs', 'resolution' and 'bounds'")
        return self


class CloudMask(_Section):
    """A cloud mask: a raster (boolean or probability, compared with ``threshold``) or vector polygons."""

    path: PathOrURL
    type: Literal["raster", "vector"] | None = None
    threshold: float = 0.5
    applies_to: list[str] | None = Field(default=None, description="modalities it hides; default the optical ones")
    crs: str | None = Field(default=None, description="CRS of a vector file that declares none")

    @property
    def resolved_type(self) -> str:
        if self.type is not None:
            return self.type
        vector_suffixes = {".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml"}
        return "vector" if self.path.suffix.lower() in vector_suffixes else "raster"


class SensorFailure(_Section):
    """A sensor-failure record: a whole modality out, a footprint, or a time window."""

    modality: str
    footprint: PathOrURL | None = Field(default=None, description="polygons where the modality is absent")
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    reason: str | None = None

    @model_validator(mode="after")
    def _window(self) -> SensorFailure:
        if (self.start is None) != (self.end is None):
            raise ValueError("a time-window failure needs both 'start' and 'end'")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError("'end' is before 'start'")
        return self


class Availability(_Section):
    clouds: list[CloudMask] = Field(default_factory=list)
    failures: list[SensorFailure] = Field(default_factory=list)


class ClassInfo(_Section):
    value: int = Field(ge=1, le=254)
    name: str
    color: str = Field(description="#rrggbb")
    description: dict[str, str] | None = Field(
        default=None, description="text per key: 'shared' and modality kinds (hs, lidar, sar, msi)"
    )

    @field_validator("color")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", v):
            raise ValueError(f"colour {v!r} is not of the form #rrggbb")
        return v.lower()

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


class Labels(_Section):
    """Ground truth: one raster or vector source, and optionally fixed train/test splits."""

    source: Source | None = None
    vector: PathOrURL | None = Field(default=None, description="polygons with a class column")
    class_column: str = "class"
    train: Source | None = None
    test: Source | None = None
    classes: list[ClassInfo]

    @model_validator(mode="after")
    def _classes(self) -> Labels:
        values = [c.value for c in self.classes]
        if len(set(values)) != len(values):
            raise ValueError(f"class values repeat: {values}")
        if not self.classes:
            raise ValueError("at least one class is needed")
        return self


class Scene(_Section):
    name: str
    modalities: list[Modality]
    grid: Grid
    availability: Availability = Field(default_factory=Availability)
    labels: Labels | None = None
    generate: Literal["demo"] | None = Field(
        default=None, description="sources the pipeline generates on first use (the procedural demo scene)"
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError(f"scene name {v!r} must be letters, digits, '.', '_' or '-'")
        return v

    @model_validator(mode="after")
    def _references(self) -> Scene:
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names repeat: {names}")
        if not names:
            raise ValueError("a scene needs at least one modality")
        if self.grid.from_modality is not None and self.grid.from_modality not in names:
            raise ValueError(f"grid.from_modality {self.grid.from_modality!r} is not one of the modalities {names}")
        for cloud in self.availability.clouds:
            for m in cloud.applies_to or []:
                if m not in names:
                    raise ValueError(f"availability.clouds applies_to {m!r}, not one of the modalities {names}")
        for failure in self.availability.failures:
            if failure.modality not in names:
                raise ValueError(f"availability.failures modality {failure.modality!r} is not one of {names}")
        return self

    @property
    def modality_names(self) -> list[str]:
        return [m.name for m in self.modalities]

    def files(self) -> list[Location]:
        """Every file the scene refers to: modality sources, labels, cloud masks, failure footprints."""
        files = [f for m in self.modalities for f in m.source.files]
        if self.labels is not None:
            for src in (self.labels.source, self.labels.train, self.labels.test):
                if src is not None:
                    files.extend(src.files)
            if self.labels.vector is not None:
                files.append(self.labels.vector)
        files.extend(cloud.path for cloud in self.availability.clouds)
        files.extend(f.footprint for f in self.availability.failures if f.footprint is not None)
        return files

    def modality(self, name: str) -> Modality:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(name)


class Protocol(_Section):
    """How missing modalities are simulated on training pixels.

    ``eta``: the fraction of incomplete samples, spread evenly over the
    2^M - 2 incomplete patterns. ``rates``: per-modality availability rates
    instead. ``mmp``: for every method, each available modality dropped with
    probability 0.5 anew at every training step, at least one kept (MMP's
    masking). ``none``: the availability the scene has.
    """

    kind: Literal["none", "eta", "rates", "mmp"] = "eta"
    eta: float = Field(default=0.5, ge=0, le=1)
    rates: dict[str, float] | None = None


class DenseCrops(_Section):
    """How the dense path trains (``model.inference: dense``): crops of the scene around the training pixels.

    ``crop_size`` and ``context`` are pixels and must be multiples of the model's window
    (``model.params.window_size``, 2 by default); see ``pipeline.learn.dense_training``.
    """

    crop_size: int = Field(default=32, ge=2, description="side of a training cell; the loss is on its labelled pixels")
    context: int = Field(default=0, ge=0, description="pixels of scene read around each cell (no loss on them)")
    crops_per_batch: int = Field(default=8, ge=1, description="crops per optimiser step")
    grid_jitter: bool = Field(default=False, description="tell each crop a random phase of the window grid every epoch")
    blobs: int = Field(default=8, ge=1, description="regions per cell in the simulated missing-modality masks")
    strip_fraction: float = Field(default=0.5, ge=0, le=1, description="share of crops masked in strips, not blobs")
    val_tile: int = Field(default=128, ge=8, description="tile side used to classify validation pixels")
    val_every: int = Field(default=5, ge=1, description="epochs between validation passes (and the first and last)")


SELECTION_VALIDATION_FRACTION = 0.2
"""Validation share of the drawn pixels when ``training.selection: best`` picks the weights on them."""


class Training(_Section):
    samples_per_class: int | dict[str, int] | None = Field(
        default=100, description="training pixels per class (one number, or per class name)"
    )
    sampling: Literal["random", "spatial"] = Field(
        default="spatial", description="how a class's training pixels are drawn: 'spatial' (spatially balanced: the "
        "class's pixels in Z-order cut into equal strata, one pixel drawn from each) or 'random' (uniformly; the only "
        "draw before 2026-12-07)")
    validation_fraction: float | None = Field(
        default=None, ge=0, lt=1, description="share of each class's drawn pixels held out to validate (never tested); "
        "none: 0.2 with selection 'best', which picks the weights on them, else 0: every drawn pixel trains")
    seed: int = 0
    epochs: int = Field(default=30, ge=1)
    batch_size: int | None = Field(
        default=None, ge=1, description="pixels per step on the patch path; none: the method's default (64; the "
        "baseline probing a frozen backbone 32)")
    lr: float | None = None
    weight_decay: float | None = None
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)
    patience: int = Field(default=8, ge=1, description="epochs without validation progress before stopping (selection: best)")
    selection: Literal["last", "best", "average"] = Field(
        default="last", description="weights a stage keeps: 'last' (end of the annealed schedule), 'best' validation OA "
        "(patch path), or 'average' (the mean over the schedule's last average_fraction of steps)")
    average_fraction: float = Field(
        default=0.25, gt=0, le=1, description="selection: average: the share of the schedule's last steps averaged")
    grad_clip: float | None = Field(default=1.0, gt=0, description="gradient norm clip per step (none: no clipping)")
    protocol_masks: Literal["fixed", "per_epoch"] = Field(
        default="fixed", description="patch path: a training pixel keeps the protocol's pattern drawn once ('fixed', the "
        "papers' fixed incomplete set) or gets a new draw every epoch ('per_epoch', as the dense path's masks)")
    augment: Literal["none", "dihedral"] = Field(
        default="none", description="'dihedral': every training patch or dense crop, with its labels and masks, turned by "
        "a random quarter turn and mirrored at random (the square's eight symmetries), drawn per sample from the seed")
    max_steps: int | None = None
    protocol: Protocol = Field(default_factory=Protocol)
    dense: DenseCrops = Field(default_factory=DenseCrops)

    @property
    def held_out_fraction(self) -> float:
        """The share of each class's drawn pixels kept for validation: ``validation_fraction``, or its default.

        Labels are what a user has least of: with ``selection: last`` or ``average`` nothing is
        picked on validation pixels (they only print a validation OA), so by default they train.
        """
        if self.validation_fraction is not None:
            return self.validation_fraction
        return SELECTION_VALIDATION_FRACTION if self.selection == "best" else 0.0


class Pretrain(_Section):
    """Self-supervised pretraining of the backbone on the catalog's pixels (``python -m pipeline.pretrain``)."""

    path: Literal["patch", "dense"] = Field(
        default="patch", description="patch: a model.patch_size crop per drawn pixel (the measured default); dense: "
        "crop_size crops through the windowed blocks of the dense classifier, every pixel reconstructed in one pass")
    crop_size: int = Field(default=32, ge=2, description="side of a dense crop (pixels), a multiple of model.params.window_size")
    steps: int = Field(default=1500, ge=1)
    batch_size: int | None = Field(default=None, ge=1, description="crops per step; none: 16 dense crops or 256 patches")
    pool_pixels: int = Field(default=30000, ge=1, description="pixels drawn from all scenes (crops around them)")
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.05, ge=0)
    seed: int = 0
    log_every: int = Field(default=25, ge=1)
    save_every: int = Field(default=250, ge=1, description="steps between resume points")


class Model(_Section):
    method: str = "mamol"
    backbone: str = Field(default="tiny", description="preset: ViT-B-16, small, tiny, ...")
    pretrained: Path | str | None = Field(
        default=None, description="CLIP weights file, 'openai' to download, or a backbone file of python -m pipeline.pretrain")
    pretrain: bool | Pretrain = Field(
        default=False, description="pretrain the backbone on the scenes' pixels first (reused while they are unchanged)")
    checkpoint: PathOrURL | None = None
    patch_size: int = Field(default=7, ge=1)
    params: dict[str, Any] = Field(default_factory=dict, description="method hyper-parameters")
    precision: Literal["float32", "bfloat16", "auto"] = "auto"
    inference: Literal["auto", "dense", "patch"] = Field(
        default="auto", description="training and mapping path: 'dense' (crops in training, one pass per tile in "
        "mapping; every method), 'patch' (a patch per pixel), 'auto' (train on the method's default path: dense "
        "for MaMOL, and for the baseline and MMP on a frozen pretrained backbone, patches for the others; map on the path "
        "the checkpoint was trained on)")

    @property
    def backbone_pretrained(self) -> bool:
        """Whether the backbone starts from pretrained weights: a ``pretrained`` file, or ``pretrain`` asked for."""
        return self.pretrained is not None or bool(self.pretrain)

    @field_validator("patch_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"patch_size must be odd so the pixel is the patch centre, got {v}")
        return v


class Output(_Section):
    folder: PathOrURL = Path("outputs")
    formats: list[Literal["cog", "png", "json", "stac", "html"]] = Field(default=["cog", "png", "json", "stac", "html"])
    tile_size: int = Field(default=128, ge=8)
    batch_pixels: int | Literal["auto"] = Field(
        default="auto", description="pixels per forward pass; 'auto': 256 on CPU (stays in cache), 4096 on GPU")

    @field_validator("batch_pixels", mode="before")
    @classmethod
    def _positive_batch(cls, value: object) -> object:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("a positive integer or 'auto'")

    @field_validator("formats")
    @classmethod
    def _html_needs_cog(cls, value: list[str]) -> list[str]:
        if "html" in value and "cog" not in value:
            raise ValueError("'html' (the web map) is drawn from the COGs: list 'cog' too")
        return value


class Cluster(_Section):
    scheduler: str | None = Field(default=None, description="address of an existing Dask scheduler")
    workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    gpu: Literal["auto", "required", "never"] = "auto"
    memory_limit: str | None = None
    listen: str = Field(default="127.0.0.1", description="address the local cluster's scheduler, workers and "
                        "dashboard listen on; 0.0.0.0 exposes them to the network")


class Storage(_Section):
    """How URLs in the catalog are opened (fsspec ``storage_options``); never credentials.

    Credentials come from the environment as each tool expects (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` or ``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``,
    ``AZURE_STORAGE_ACCOUNT_NAME`` ...). ``options`` passes further fsspec options of the
    URL's protocol through unchanged.
    """

    endpoint_url: str | None = Field(default=None, description="an S3-compatible endpoint, e.g. https://minio.example:9000")
    anonymous: bool = Field(default=False, description="unsigned requests (public buckets)")
    profile: str | None = Field(default=None, description="a named profile of ~/.aws/config")
    region: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("options")
    @classmethod
    def _no_credentials(cls, v: dict[str, Any]) -> dict[str, Any]:
        secrets = sorted(k for k in v if k.lower() in CREDENTIAL_KEYS)
        if secrets:
            raise ValueError(f"no credentials in a catalog ({', '.join(secrets)}): set them in the environment")
        return v

    def fsspec_options(self) -> dict[str, Any]:
        """The ``storage_options`` fsspec/s3fs take for the catalog's URLs."""
        options: dict[str, Any] = dict(self.options)
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.anonymous:
            options["anon"] = True
        if self.profile:
            options["profile"] = self.profile
        if self.region:
            options.setdefault("client_kwargs", {})["region_name"] = self.region
        return options


class Catalog(_Section):
    name: str
    description: str | None = None
    scenes: list[Scene]
    model: Model = Field(default_factory=Model)
    training: Training = Field(default_factory=Training)
    output: Output = Field(default_factory=Output)
    cluster: Cluster = Field(default_factory=Cluster)
    storage: Storage = Field(default_factory=Storage)
    path: PathOrURL | None = Field(default=None, exclude=True, description="the catalog file, set by load_catalog")

    @model_validator(mode="after")
    def _unique_scenes(self) -> Catalog:
        names = [s.name for s in self.scenes]
        if len(set(names)) != len(names):
            raise ValueError(f"scene names repeat: {names}")
        if not names:
            raise ValueError("a catalog needs at least one scene")
        return self

    def scene(self, name: str | None = None) -> Scene:
        if name is None:
            return self.scenes[0]
        for s in self.scenes:
            if s.name == name:
                return s
        raise CatalogError(self.path, "scenes", f"a scene named {name!r}", f"{[s.name for s in self.scenes]}")

    def content_hash(self) -> str:
        """A hash of the validated catalog (paths resolved), for idempotence and reports."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()


def _resolve_paths(obj: Any, base: Location, options: dict[str, Any]) -> None:
    """Make every path field absolute against ``base`` (the catalog's folder), URLs carrying ``options``, in place."""

    def resolved(value: Any) -> Any:
        if isinstance(value, (Path, UPath)):
            # The storage options are the object store's; a read-only https:// input is opened plainly.
            remote = isinstance(value, UPath) and is_remote(value) and value.protocol not in READ_ONLY_SCHEMES
            return resolve_against(base, as_location(value, options) if remote else value)
        return value

    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            if name == "path" and isinstance(obj, Catalog):
                continue
            value = getattr(obj, name)
            if isinstance(value, (Path, UPath)):
                object.__setattr__(obj, name, resolved(value))
            elif isinstance(value, list):
                new = [resolved(v) for v in value]
                object.__setattr__(obj, name, new)
                for v in new:
                    _resolve_paths(v, base, options)
            else:
                _resolve_paths(value, base, options)
    elif isinstance(obj, dict):
        for v in obj.values():
            _resolve_paths(v, base, options)


def _format_location(loc: tuple[Any, ...], data: Any) -> str:
    """Turn a pydantic error location into a dotted key, with scene/modality names instead of indexes."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and 0 <= item < len(node):
            entry = node[item]
            label = entry.get("name") if isinstance(entry, dict) else None
            parts[-1] = f"{parts[-1]}[{label!r}]" if label and parts else f"{parts[-1] if parts else ''}[{item}]"
            node = entry
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def parse_catalog(data: Any, path: Location | None = None) -> Catalog:
    """Validate a catalog mapping; ``path`` (the file) names errors and anchors relative paths."""
    if not isinstance(data, dict):
        raise CatalogError(path, "(top level)", "a mapping with 'name' and 'scenes'", type(data).__name__)
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _format_location(tuple(err["loc"]), data) or "(top level)"
        if err["type"] == "extra_forbidden":
            expected = "no such key (misspelt or unknown)"
        elif err["type"] == "missing":
            expected = "a required key that is absent"
        else:
            expected = err["msg"].removeprefix("Value error, ")  # our validators word what they expect
        found = err.get("input")
        # A section-level problem (a scene, a modality) is named by its key; its whole content is no help.
        quiet = err["type"] == "missing" or isinstance(found, (dict, list))
        found_text = "" if quiet else repr(found)[:200]
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise CatalogError(path, key, expected + more, found_text) from None
    check_model_params(catalog.model.method, catalog.model.params, path)
    dense = catalog.training.dense
    check_dense_crops(catalog.model.method, catalog.model.params, dense.crop_size, dense.context, path)
    options = catalog.storage.fsspec_options()
    if path is not None and is_remote(path):
        catalog.path = as_location(str(path), options)
        base: Location = catalog.path.parent
    else:
        catalog.path = local_path(path).resolve() if path is not None else None
        base = catalog.path.parent if catalog.path is not None else Path.cwd()
    try:
        _resolve_paths(catalog, base, options)
    except ValueError as exc:
        raise CatalogError(path, "(paths)", "paths relative to the catalog, or URLs", str(exc)) from None
    return catalog


def load_catalog(path: str | Path | UPath) -> Catalog:
    """Read and validate a YAML catalog file (a local path or a URL: its storage options come from the environment)."""
    path = as_location(path)
    try:
        present = path.is_file()
    except OSError as exc:  # a URL that cannot be reached (endpoint, permissions)
        raise CatalogError(path, "(file)", "a readable YAML catalog", f"{type(exc).__name__}: {exc}") from None
    if not present:
        raise CatalogError(path, "(file)", "an existing YAML catalog file", "no such file")
    try:
        size = path.stat().st_size
        if size > MAX_CATALOG_BYTES:
            raise CatalogError(path, "(file)", f"a catalog of at most {MAX_CATALOG_BYTES} bytes", f"{size} bytes")
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CatalogError(path, "(syntax)", "valid YAML", str(exc).replace("\n", " ")) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(path, "(file)", "a readable UTF-8 YAML file", str(exc)) from None
    if expanded_nodes(data, MAX_CATALOG_NODES) > MAX_CATALOG_NODES:
        raise CatalogError(path, "(top level)", f"at most {MAX_CATALOG_NODES} values with YAML aliases expanded "
                           "(an alias bomb?)", "more")
    return parse_catalog(data, path)
