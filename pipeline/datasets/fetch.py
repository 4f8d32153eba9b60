"""Lay a registered dataset out under ``<root>/data/<name>/``: download what is missing, report what is there."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.datasets.download import (
    DownloadError,
    download_file,
    part_path,
    sha256_of,
    url_hosts,
)
from pipeline.datasets.registry import Dataset, DatasetFile, get_dataset

# What a file's state means: missing (nothing there), partial (only a .part from an interrupted
# download), verified (checksum matches), unverified (present, the project knows no checksum),
# mismatch (present, checksum differs from every known one).
STATES = ("missing", "partial", "verified", "unverified", "mismatch")


@dataclass(frozen=True)
class FileState:
    """Where a dataset file is and whether it is the file the registry describes."""

    dataset: str
    name: str
    path: Path
    state: str
    sha256: str | None = None
    action: str = ""  # fetch only: "kept" (already in place) or "downloaded"


def default_root() -> Path:
    """The project root (holding ``catalogs/`` and ``data/``); the working folder when installed elsewhere."""
    project = Path(__file__).resolve().parents[2]
    return project if (project / "pyproject.toml").is_file() else Path.cwd()


def dataset_dir(dataset: Dataset, root: Path | None = None) -> Path:
    """``<root>/data/<dataset>``: where the catalogs expect the dataset's files."""
    return (root if root is not None else default_root()).resolve() / "data" / dataset.name


def file_state(dataset: Dataset, file: DatasetFile, root: Path | None = None) -> FileState:
    """State of one file on disk; hashes it when present."""
    path = dataset_dir(dataset, root) / file.name
    if not path.is_file():
        state = "partial" if part_path(path).is_file() else "missing"
        return FileState(dataset.name, file.name, path, state)
    found = sha256_of(path)
    if not file.accepted_sha256:
        state = "unverified"
    else:
        state = "verified" if found in file.accepted_sha256 else "mismatch"
    return FileState(dataset.name, file.name, path, state, found)


def dataset_status(dataset: Dataset | str, root: Path | None = None) -> list[FileState]:
    """State of every file of a dataset."""
    dataset = get_dataset(dataset) if isinstance(dataset, str) else dataset
    return [file_state(dataset, file, root) for file in dataset.files]


def mirror_url(base: str, file: DatasetFile) -> str:
    """URL of ``file`` on a mirror that serves the dataset's files by name under ``base``."""
    return f"{base.rstrip('/')}/{urllib.parse.quote(file.name)}"


def mirror_hosts(dataset: Dataset, mirror: str | None = None) -> set[str]:
    """Hosts a download of ``dataset`` may be redirected to: its registered mirrors' (and ``mirror``'s)."""
    urls = [url for file in dataset.files for url in file.urls] + ([mirror] if mirror else [])
    return url_hosts(urls)


def fetch_dataset(
    dataset: Dataset | str,
    root: Path | None = None,
    *,
    mirror: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    progress: bool = True,
    allow_unverified: bool = False,
    on_file: Callable[[FileState], None] | None = None,
) -> list[FileState]:
    """Download every file of ``dataset`` that is not already in place, verified, under ``<root>/data/<name>/``.

    Args:
        dataset: a registered name or a Dataset.
        root: folder holding ``data/``; default: the project root.
        mirror: base URL that replaces the registry's mirrors; file URLs are ``<mirror>/<file name>``.
        timeout: seconds a connection or a read may block.
        retries: resumptions per mirror after a dropped connection.
        progress: tqdm progress bars on stderr.
        allow_unverified: also download files the registry knows no sha256 for; without it they are
            refused (their content cannot be checked).
        on_file: called with each file's state as soon as it is settled.

    Returns:
        The state of each file, all "verified" or "unverified".

    Raises:
        DownloadError: some files could not be downloaded; the message says which URLs failed, what to
            download by hand and the full path to put each file at. Files that did arrive are kept.
    """
    dataset = get_dataset(dataset) if isinstance(dataset, str) else dataset
    settled: list[FileState] = []
    failed: list[tuple[DatasetFile, Path, dict[str, str]]] = []
    hosts = mirror_hosts(dataset, mirror)
    for file in dataset.files:
        current = file_state(dataset, file, root)
        if current.state in ("verified", "unverified"):
            result = replace(current, action="kept")
        else:
            urls = (mirror_url(mirror, file),) if mirror else file.urls
            if not urls:
                failed.append((file, current.path, {}))
                continue
            if not file.accepted_sha256 and not allow_unverified:
                refused = "refused: the registry has no sha256 for this file (pass --allow-unverified to install it unchecked)"
                failed.append((file, current.path, dict.fromkeys(urls, refused)))
                continue
            try:
                found = download_file(
                    urls,
                    current.path,
                    file.accepted_sha256,
                    size=file.size,
                    timeout=timeout,
                    retries=retries,
                    progress=progress,
                    allowed_hosts=hosts,
                )
            except DownloadError as exc:
                failed.append((file, current.path, exc.failures))
                continue
            state = "verified" if file.accepted_sha256 else "unverified"
            result = FileState(dataset.name, file.name, current.path, state, found, action="downloaded")
        settled.append(result)
        if on_file is not None:
            on_file(result)
    if failed:
        failures = {url: reason for _, _, tried in failed for url, reason in tried.items()}
        raise DownloadError(
            _manual_download_message(dataset, failed), paths=[path for _, path, _ in failed], failures=failures
        )
    return settled


def _manual_download_message(dataset: Dataset, failed: list[tuple[DatasetFile, Path, dict[str, str]]]) -> str:
    lines = [
        f"{dataset.name}: {len(failed)} of {len(dataset.files)} files could not be downloaded.",
        f"Get them by hand from {dataset.homepage}"
        + (" (registration required)" if dataset.registration_required else "")
        + f": {dataset.manual}",
    ]
    for file, path, tried in failed:
        lines.append(f"  {file.name}: download it by hand and put it at {path}")
        if tried:
            lines.extend(f"    tried {url}: {reason}" for url, reason in tried.items())
        else:
            lines.append("    no public mirror serves this file")
        if file.accepted_sha256:
            lines.append(f"    its sha256 must be {' or '.join(file.accepted_sha256)}")
    lines.append(
        "Files already in place are kept; an interrupted download stays as <file>.part and the next run resumes it."
    )
    return "\n".join(lines)
