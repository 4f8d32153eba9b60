"""Locations: a local path or a URL on an object store, and what each tool needs to open it.

Every path the pipeline handles (catalog entries, stores, checkpoints, exports) is a
:data:`Location`: a :class:`pathlib.Path` for local files, or a :class:`upath.UPath`
for a URL (``s3://``, ``gs://``, ``az://``, ``https://`` for read-only inputs), which
carries the fsspec ``storage_options`` (endpoint, anonymous, profile) from the
catalog's ``storage`` section. Credentials are never in a catalog: fsspec, botocore and
GDAL read them from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``, ``AZURE_STORAGE_*``).

The same location is handed to each library in its own dialect:

* Zarr / xarray: the URL string plus ``storage_options`` (:func:`zarr_kwargs`).
* GDAL / rasterio: a ``/vsis3/``, ``/vsigs/``, ``/vsiaz/`` or ``/vsicurl/`` path
  (:func:`gdal_path`), read window by window with HTTP range requests, with the
  endpoint turned into GDAL's configuration (:func:`configure_gdal`).
* Everything else (``.mat``, ENVI, checkpoints): a local copy in a cache keyed by the
  object's identity (:func:`local_copy`).

**Complete results on object stores.** An object store has no rename: a single
object appears whole or not at all (one PUT), so a file is written to a local
temporary and uploaded (:func:`pipeline.files.atomic_file`). A store made of many
objects (``scene.zarr``, ``map.zarr``) is written in place under its prefix, and a
small marker object ``<store>.complete`` is written last (and deleted first when the
store is rewritten). Readers trust a remote store only when its marker exists
(:func:`is_complete`), so a killed run leaves an incomplete store that the next run
recognises and rewrites (or resumes), never one that is read as a result.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import time
from pathlib import Path
from typing import Any, TypeAlias

import fsspec
from upath import UPath

Location: TypeAlias = "Path | UPath"

#: URL schemes GDAL reads through its virtual file systems (fsspec name -> GDAL prefix).
GDAL_PREFIXES = {
    "s3": "/vsis3/", "s3a": "/vsis3/", "gs": "/vsigs/", "gcs": "/vsigs/",
    "az": "/vsiaz/", "abfs": "/vsiaz/", "abfss": "/vsiaz/", "http": "/vsicurl/", "https": "/vsicurl/",
}
#: Read-only schemes: inputs only, never a place to write a result.
READ_ONLY_SCHEMES = ("http", "https")
#: Catalog ``storage.options`` keys that would put a secret into a catalog.
CREDENTIAL_KEYS = ("key", "secret", "token", "password", "account_key", "sas_token", "connection_string",
                   "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "credentials")
COMPLETE_SUFFIX = ".complete"
CACHE_ENV = "MMLC_CACHE"


def is_url(value: object) -> bool:
    """Whether ``value`` names a URL (``scheme://...``) rather than a local path."""
    if isinstance(value, UPath):
        return value.protocol not in ("", "file", "local")
    return isinstance(value, str) and "://" in value and not value.startswith("file://")


def as_location(value: str | os.PathLike[str] | UPath, storage_options: dict[str, Any] | None = None) -> Location:
    """``value`` as a :class:`~pathlib.Path` (local) or a :class:`~upath.UPath` carrying ``storage_options`` (URL)."""
    if isinstance(value, UPath) and is_url(value):
        if storage_options and set(value.storage_options) <= {"use_listings_cache"}:
            return as_location(str(value), storage_options)
        return value
    if is_url(value):
        # No listing cache: other processes (Dask workers) write the same prefixes, and a cached
        # listing would hide their objects (a completion marker) from this one.
        return UPath(str(value), **{"use_listings_cache": False, **(storage_options or {})})
    if isinstance(value, str) and value.startswith("file://"):
        value = value.removeprefix("file://")
    return Path(value)  # type: ignore[arg-type]


def resolve_against(base: Location, value: Location) -> Location:
    """``value`` made absolute against the folder ``base`` (local or remote); URLs and absolute paths are kept."""
    if is_remote(value) or (not is_remote(base) and local_path(value).is_absolute()):
        return value
    if not is_remote(base):
        return (local_path(base) / local_path(value)).resolve()
    if local_path(value).is_absolute():
        raise ValueError(f"{value}: an absolute local path in a catalog read from {base} (give a URL or a relative path)")
    scheme, _, rest = url(base).partition("://")
    joined = posixpath.normpath(posixpath.join(rest, local_path(value).as_posix()))
    return UPath(f"{scheme}://{joined}", **storage_options(base))


def local_path(location: Location | str) -> Path:
    """A local location as a :class:`~pathlib.Path` (a URL here is a programming error)."""
    if is_remote(location):
        raise ValueError(f"{location}: a local path is needed here, not a URL")
    return Path(str(location))


def is_remote(location: object) -> bool:
    return isinstance(location, UPath) and is_url(location)


def url(location: Location | str) -> str:
    """The string a library opens: the URL of a remote location, the path of a local one."""
    return str(location)


def storage_options(location: Location | str) -> dict[str, Any]:
    """The fsspec options a remote location carries (empty for a local path)."""
    return dict(location.storage_options) if is_remote(location) else {}  # type: ignore[union-attr]


def zarr_kwargs(location: Location | str) -> dict[str, Any]:
    """Keyword arguments for ``xr.open_zarr`` / ``to_zarr`` / ``zarr.open_group``: the storage options of a URL."""
    return {"storage_options": storage_options(location)} if is_remote(location) else {}


def open_zarr(location: Location | str, **kwargs: Any) -> Any:
    """``xr.open_zarr`` for a local store or a URL (with its storage options)."""
    import xarray as xr

    return xr.open_zarr(url(location), **zarr_kwargs(location), **kwargs)


def filesystem(location: Location) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem of a location (the local one for a path)."""
    return location.fs if is_remote(location) else fsspec.filesystem("file")  # type: ignore[union-attr]


def check_writable_location(location: Location) -> None:
    """Refuse a read-only URL scheme (http/https) as a place to write."""
    if is_remote(location) and location.protocol in READ_ONLY_SCHEMES:  # type: ignore[union-attr]
        raise ValueError(f"{location} is a read-only {location.protocol} URL: results go to a local folder or an object store")  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- GDAL


def gdal_path(location: Location | str) -> str:
    """The path GDAL/rasterio opens: ``/vsis3/bucket/key`` for ``s3://bucket/key``, ``/vsicurl/https://...``, or a local path."""
    loc = as_location(location) if isinstance(location, str) else location
    if not is_remote(loc):
        return str(loc)
    protocol = loc.protocol  # type: ignore[union-attr]
    prefix = GDAL_PREFIXES.get(protocol)
    if prefix is None:
        raise ValueError(f"{loc}: GDAL has no virtual file system for {protocol}:// (use a local copy)")
    text = str(loc)
    return prefix + text if prefix == "/vsicurl/" else prefix + text.split("://", 1)[1]


def gdal_config(options: dict[str, Any]) -> dict[str, str]:
    """GDAL configuration for the catalog's storage options (an S3-compatible endpoint, anonymous access, profile).

    Environment variables the user set win (GDAL reads them itself); credentials stay in the environment.
    """
    config: dict[str, str] = {}  # only AWS_* keys: process-wide, they must not change how local files are read
    endpoint = options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = str(endpoint).partition("://")
        config["AWS_S3_ENDPOINT"] = host.rstrip("/")
        config["AWS_HTTPS"] = "NO" if scheme == "http" else "YES"
        config["AWS_VIRTUAL_HOSTING"] = "FALSE"
    if options.get("anon"):
        config["AWS_NO_SIGN_REQUEST"] = "YES"
    if options.get("profile"):
        config["AWS_PROFILE"] = str(options["profile"])
    region = (options.get("client_kwargs") or {}).get("region_name")
    if region:
        config["AWS_REGION"] = str(region)
    return config


def configure_gdal(options: dict[str, Any]) -> None:
    """Make GDAL in this process (all threads, also Dask's) see the storage configuration, unless the environment sets it."""
    for name, value in gdal_config(options).items():
        os.environ.setdefault(name, value)


# ----------------------------------------------------------------------------- complete markers


def completion_marker(location: Location) -> Location:
    """The marker object beside a remote store: ``<store>.complete``."""
    return location.with_name(location.name + COMPLETE_SUFFIX)


def is_complete(location: Location) -> bool:
    """Whether a store is a complete result: a local directory (moved into place when complete), or a remote store with its marker."""
    if not is_remote(location):
        return local_path(location).is_dir()
    return completion_marker(location).exists()


def mark_incomplete(location: Location) -> None:
    """Delete a remote store's marker, before anything of the store is rewritten."""
    marker = completion_marker(location)
    if marker.exists():
        marker.unlink()


def mark_complete(location: Location, **details: Any) -> None:
    """Write a remote store's marker last, when every object of the store is written (one PUT: atomic)."""
    document = {"complete": True, "store": url(location), "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **details}
    completion_marker(location).write_text(json.dumps(document, indent=2) + "\n")


def remove_tree(location: Location) -> None:
    """Delete a store (a local folder or every object under a remote prefix); absent is fine."""
    if is_remote(location):
        fs = filesystem(location)
        if fs.exists(url(location)):
            fs.rm(url(location), recursive=True)
    else:
        shutil.rmtree(local_path(location), ignore_errors=True)


# ----------------------------------------------------------------------------- local copies


def cache_folder() -> Path:
    """Where remote inputs and checkpoints are copied: ``$MMLC_CACHE`` or ``~/.cache/mmlandcover``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mmlandcover")


def remote_identity(location: Location) -> str:
    """A key for what is stored at a remote location now: its URL and each object's size and ETag (or mtime)."""
    fs = filesystem(location)
    root = url(location)
    infos = [fs.info(root)] if fs.isfile(root) else sorted(fs.find(root, detail=True).values(), key=lambda i: i["name"])
    fields = [[i["name"], i.get("size"), i.get("ETag") or i.get("etag") or i.get("LastModified") or i.get("mtime")] for i in infos]
    return hashlib.sha256(json.dumps([root, fields], default=str).encode()).hexdigest()[:24]


def local_copy(location: Location | str, storage: dict[str, Any] | None = None, *companions: Location) -> Path:
    """A local path holding what ``location`` holds: the path itself when local, else a cached download.

    A file or a whole prefix (a checkpoint folder) is downloaded once into
    :func:`cache_folder`, under a key of its URL, sizes and ETags, so a changed object is
    fetched again and an unchanged one is not. ``companions`` (an ENVI header) that exist
    are copied beside it. The copy is made under a temporary name and moved into place,
    so a killed download is never taken for a complete one.
    """
    from pipeline.files import atomic_directory

    loc = as_location(location, storage)
    if not is_remote(loc):
        return local_path(loc)
    present = [c for c in companions if c.exists()]
    key = hashlib.sha256("".join(remote_identity(x) for x in (loc, *present)).encode()).hexdigest()[:24]
    target = cache_folder() / key / loc.name
    if target.exists():
        return target
    with atomic_directory(target.parent) as staging:
        for item in (loc, *present):
            filesystem(item).get(url(item), str(Path(staging) / item.name), recursive=True)
    return target
