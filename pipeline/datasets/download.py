"""Resumable, checksum-verified HTTP download of one file from a list of mirrors (stdlib urllib).

The bytes go to ``<dest>.part``; a later attempt asks the server for the rest with
``Range: bytes=<size>-`` and appends when it answers 206 (it starts again from zero on a 200).
The finished ``.part`` is checked against the expected sha256 and only then moved onto ``dest``
with ``os.replace``, so ``dest`` never holds a partial or corrupt file. A checksum mismatch deletes
the ``.part``; a network failure keeps it, so the next run resumes.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Sequence
from pathlib import Path

from tqdm import tqdm

from pipeline.config.errors import PipelineError

CHUNK_BYTES = 1 << 16
USER_AGENT = "mmlandcover-datasets/0.1 (+python-urllib)"
_LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec/"


class DownloadError(PipelineError):
    """A file could not be downloaded intact: every mirror failed, or none exists.

    ``failures`` maps each URL tried to why it failed; ``paths`` are the destinations still missing.
    """

    def __init__(self, message: str, paths: Sequence[Path] = (), failures: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.paths = tuple(paths)
        self.failures = dict(failures or {})


class _TransferFailed(Exception):
    """One request did not deliver the file; ``reason`` says why for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str, allowed_hosts: Collection[str] | None = None) -> str | None:
    """Why ``url`` may not be fetched, or None: https only (plain http to loopback, for tests), and,
    when ``allowed_hosts`` is given, only from those hosts (the registered mirrors')."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "http" and not _is_loopback(host):
        return "plain http is refused (https only; http only on loopback)"
    if parts.scheme not in ("https", "http"):
        return f"scheme {parts.scheme or '(none)'!r} is refused (https only)"
    if allowed_hosts is not None and host not in {h.lower() for h in allowed_hosts}:
        return f"host {host!r} is not one of the registered mirrors ({', '.join(sorted(allowed_hosts))})"
    return None


def url_hosts(urls: Sequence[str]) -> set[str]:
    """The host names of ``urls``."""
    return {(urllib.parse.urlsplit(u).hostname or "").lower() for u in urls}


class _MirrorRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed host over an allowed scheme (see :func:`url_problem`)."""

    def __init__(self, allowed_hosts: Collection[str]) -> None:
        self.allowed_hosts = allowed_hosts

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # urllib's signature
        problem = url_problem(newurl, self.allowed_hosts)
        if problem is not None:
            fp.close()
            raise _TransferFailed(f"redirect to {newurl} refused: {problem}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` accumulate until they are verified."""
    return dest.with_name(dest.name + ".part")


def _content_range_start(header: str | None) -> int | None:
    match = re.match(r"\s*bytes\s+(\d+)-", header or "")
    return int(match.group(1)) if match else None


def _transfer(url: str, part: Path, *, timeout: float, size: int | None, progress: bool, label: str,
              allowed_hosts: Collection[str]) -> None:
    """One request: fetch what ``part`` lacks and append it (or rewrite it when the server ignores Range)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(_MirrorRedirects(allowed_hosts))
    with opener.open(request, timeout=timeout) as response:
        status = response.status
        if status == 206 and _content_range_start(response.headers.get("Content-Range")) == offset:
            mode = "ab"
        elif status == 200:
            mode, offset = "wb", 0
        else:
            raise _TransferFailed(f"unexpected answer HTTP {status} to a request from byte {offset}")
        content_type = response.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() == "text/html":
            raise _TransferFailed(f"the server answered with an HTML page ({content_type}), not the file")
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else size
        part.parent.mkdir(parents=True, exist_ok=True)
        with (
            open(part, mode) as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=label,
                file=sys.stderr,
                disable=None if progress else True,
                leave=False,
            ) as bar,
        ):
            received = 0
            for block in iter(lambda: response.read(CHUNK_BYTES), b""):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    # http.client returns b"" when the connection closes early instead of raising: check the length here.
    if length and length.isdigit() and received < int(length):
        raise http.client.IncompleteRead(b"", int(length) - received)


def _is_lfs_pointer(path: Path) -> bool:
    """A Git LFS pointer served in place of the file (small text starting with the LFS spec line)."""
    if path.stat().st_size > 1024:
        return False
    with open(path, "rb") as stream:
        return stream.read(len(_LFS_POINTER_PREFIX)) == _LFS_POINTER_PREFIX


def _download_from(
    url: str,
    part: Path,
    accepted_sha256: Sequence[str],
    *,
    timeout: float,
    retries: int,
    size: int | None,
    progress: bool,
    label: str,
    allowed_hosts: Collection[str],
) -> str:
    """Bring ``part`` to a complete, verified copy from ``url``; return its sha256 or raise _TransferFailed.

    A dropped connection is retried (resuming) while each attempt adds bytes, at most ``retries``
    times. A ``.part`` left by an earlier run that fails the checksum is discarded and the file
    fetched once more from zero.
    """
    restarted = False
    resumed = part.exists() and part.stat().st_size > 0
    attempts = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _transfer(url, part, timeout=timeout, size=size, progress=progress, label=label, allowed_hosts=allowed_hosts)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code != 416 or not part.exists():  # 416: nothing after our offset, the .part is whole
                raise _TransferFailed(f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            grew = (part.stat().st_size if part.exists() else 0) > before
            attempts += 1
            if grew and attempts <= retries:
                continue
            reason = getattr(exc, "reason", None) or exc
            raise _TransferFailed(f"{type(exc).__name__}: {reason}") from None
        found = sha256_of(part)
        if accepted_sha256 and found not in accepted_sha256:
            part.unlink()
            if resumed and not restarted:
                restarted = True
                continue
            expected = " or ".join(accepted_sha256)
            raise _TransferFailed(f"sha256 mismatch: expected {expected}, found {found}; the download was deleted")
        if not accepted_sha256 and _is_lfs_pointer(part):
            part.unlink()
            raise _TransferFailed("the server sent a Git LFS pointer, not the file")
        return found


def download_file(
    urls: Sequence[str],
    dest: Path,
    accepted_sha256: Sequence[str] = (),
    *,
    size: int | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    progress: bool = True,
    allowed_hosts: Collection[str] | None = None,
) -> str:
    """Download ``dest`` from the first of ``urls`` that delivers it intact; return its sha256.

    Only https URLs are fetched (plain http only from loopback, for tests), and a redirect is
    followed only to one of ``allowed_hosts`` (default: the hosts of ``urls``).

    Args:
        urls: mirrors, tried in order.
        dest: final path; its folder is created when bytes arrive.
        accepted_sha256: checksums the file may have; empty: not verifiable, any content is kept.
        size: expected size in bytes, for the progress bar when the server does not say.
        timeout: seconds a connection or a read may block.
        retries: resumptions per mirror after a dropped connection.
        progress: show a tqdm bar on stderr (when stderr is a terminal).
        allowed_hosts: hosts a redirect may lead to.

    Raises:
        DownloadError: no mirror delivered the file; it names each URL and why it failed.
    """
    part = part_path(dest)
    failures: dict[str, str] = {}
    hosts = set(allowed_hosts) if allowed_hosts is not None else url_hosts(urls)
    for url in urls:
        problem = url_problem(url, hosts)
        if problem is not None:
            failures[url] = f"refused: {problem}"
            continue
        try:
            found = _download_from(
                url,
                part,
                tuple(accepted_sha256),
                timeout=timeout,
                retries=retries,
                size=size,
                progress=progress,
                label=dest.name,
                allowed_hosts=hosts,
            )
        except _TransferFailed as exc:
            failures[url] = exc.reason
            continue
        os.replace(part, dest)
        return found
    tried = "".join(f"\n  {url}: {reason}" for url, reason in failures.items()) or " (no URL to try)"
    raise DownloadError(f"{dest}: could not be downloaded; tried{tried}", paths=(dest,), failures=failures)
