"""pipeline.datasets against a real HTTP server on loopback that serves fixture files with Range support.

The fixture files are the real Trento and MUUFL pieces from ../shared/data when present (so the
registry's checksums are exercised), else small generated files with their own checksums.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.datasets import (
    DATASETS,
    Dataset,
    DatasetFile,
    DownloadError,
    dataset_status,
    download_file,
    fetch_dataset,
    sha256_of,
)
from pipeline.datasets.cli import main
from pipeline.datasets.download import part_path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
SHARED = PROJECT_ROOT / ".." / "shared" / "data"
SHARED_FILES = {
    ("trento", "Italy_lidar.mat"): SHARED / "trento" / "Italy_lidar.mat",
    ("trento", "allgrd.mat"): SHARED / "trento" / "allgrd.mat",
    ("muufl", "LiDAR.mat"): SHARED / "muufl" / "LiDAR.mat",
    ("muufl", "gt.mat"): SHARED / "muufl" / "gt.mat",
}
TIMEOUT = 5.0  # seconds; every network call in these tests is bounded by it


@dataclass
class ServerState:
    """What the fixture server serves and what it saw."""

    files: dict[str, bytes]
    corrupt: set[str] = field(default_factory=set)  # served with flipped bytes
    html: set[str] = field(default_factory=set)  # answered with an HTML page
    drop_after: dict[str, int] = field(default_factory=dict)  # first request: close after N body bytes
    ignore_range: bool = False  # answer 200 with the whole file, as servers without Range support do
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location of a 302 answer
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _flip(body: bytes) -> bytes:
    middle = len(body) // 2
    return body[:middle] + bytes(b ^ 0xFF for b in body[middle : middle + 16]) + body[middle + 16 :]


class RangeHandler(BaseHTTPRequestHandler):
    """GET with single-range support (``bytes=START-[END]``), as file hosts answer it."""

    state: ServerState  # set on a subclass per server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        with self.state.lock:
            self.state.requests.append((self.path, range_header))
            drop = self.state.drop_after.pop(name, None)
        if name in self.state.redirects:
            self.send_response(302)
            self.send_header("Location", self.state.redirects[name])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.state.files.get(name)
        if body is None:
            self.send_error(404)
            return
        if name in self.state.html:
            page = b"<html><body>Sign in to continue</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if name in self.state.corrupt:
            body = _flip(body)
        total, start, status = len(body), 0, 200
        if range_header and not self.state.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
            if match is None or int(match.group(1)) >= total:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, status = int(match.group(1)), 206
            end = int(match.group(2)) if match.group(2) else total - 1
            body = body[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{total}")
        self.end_headers()
        if drop is not None:
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture(params=["trento", "muufl"])
def fixture_files(request: pytest.FixtureRequest) -> tuple[Dataset, dict[str, bytes]]:
    """A dataset to serve: the real pieces of Trento or MUUFL with the registry's checksums, or generated files."""
    name = request.param
    real = {file: path for (dataset, file), path in SHARED_FILES.items() if dataset == name and path.is_file()}
    if len(real) == 2:
        bodies = {file: path.read_bytes() for file, path in real.items()}  # read only; served from memory
        files = tuple(f for f in DATASETS[name].files if f.name in bodies)
        return replace(DATASETS[name], files=files), bodies
    rng = random.Random(0)
    bodies = {"cube.mat": rng.randbytes(300_000), "labels.mat": rng.randbytes(3_000)}
    files = tuple(DatasetFile(n, (), hashlib.sha256(b).hexdigest(), len(b)) for n, b in bodies.items())
    dataset = Dataset("fixture", "generated fixture", files, "https://example.invalid", "by hand", "none", "none")
    return dataset, bodies


@pytest.fixture
def server(fixture_files: tuple[Dataset, dict[str, bytes]]) -> Iterator[tuple[str, ServerState]]:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) serving the fixture files; yields (base URL, state)."""
    state = ServerState(files=dict(fixture_files[1]))
    handler = type("Handler", (RangeHandler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=TIMEOUT)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fetch_downloads_and_verifies_every_file(tmp_path, fixture_files, server):
    dataset, bodies = fixture_files
    base, state = server
    seen = []
    results = fetch_dataset(dataset, tmp_path, mirror=base, timeout=TIMEOUT, progress=False, on_file=seen.append)
    assert [r.state for r in results] == ["verified"] * len(bodies)
    assert [r.action for r in results] == ["downloaded"] * len(bodies)
    assert seen == results
    for file in dataset.files:
        path = tmp_path / "data" / dataset.name / file.name
        assert path.read_bytes() == bodies[file.name]
        assert sha256_of(path) == file.sha256
        assert not part_path(path).exists()
    # A second run finds everything verified and asks the server for nothing.
    asked = len(state.requests)
    again = fetch_dataset(dataset, tmp_path, mirror=base, timeout=TIMEOUT, progress=False)
    assert [r.action for r in again] == ["kept"] * len(bodies)
    assert len(state.requests) == asked


def test_corrupted_download_is_rejected_and_nothing_stays(tmp_path, fixture_files, server):
    dataset, bodies = fixture_files
    base, state = server
    victim = dataset.files[0]
    state.corrupt.add(victim.name)
    with pytest.raises(DownloadError) as caught:
        fetch_dataset(dataset, tmp_path, mirror=base, timeout=TIMEOUT, progress=False)
    dest = tmp_path / "data" / dataset.name / victim.name
    message = str(caught.value)
    assert "sha256 mismatch" in message
    assert victim.sha256 in message
    assert hashlib.sha256(_flip(bodies[victim.name])).hexdigest() in message
    assert str(dest) in message
    assert caught.value.paths == (dest,)
    assert not dest.exists() and not part_path(dest).exists()
    # The intact files of the same dataset did arrive, verified.
    for file in dataset.files[1:]:
        assert sha256_of(tmp_path / "data" / dataset.name / file.name) == file.sha256


def test_dropped_connection_resumes_with_a_range_request(tmp_path, fixture_files, server):
    dataset, bodies = fixture_files
    base, state = server
    big = max(dataset.files, key=lambda f: len(bodies[f.name]))
    cut = len(bodies[big.name]) // 3
    state.drop_after[big.name] = cut
    dest = tmp_path / "out" / big.name
    found = download_file([f"{base}/{big.name}"], dest, (big.sha256,), timeout=TIMEOUT, progress=False)
    assert found == big.sha256
    assert dest.read_bytes() == bodies[big.name]
    assert state.requests == [(f"/{big.name}", None), (f"/{big.name}", f"bytes={cut}-")]


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path, fixture_files, server):
    dataset, bodies = fixture_files
    base, state = server
    file = dataset.files[0]
    dest = tmp_path / "data" / dataset.name / file.name
    dest.parent.mkdir(parents=True)
    half = len(bodies[file.name]) // 2
    part_path(dest).write_bytes(bodies[file.name][:half])
    assert dataset_status(dataset, tmp_path)[0].state == "partial"
    download_file([f"{base}/{file.name}"], dest, (file.sha256,), timeout=TIMEOUT, progress=False)
    assert dest.read_bytes() == bodies[file.name]
    assert state.requests == [(f"/{file.name}", f"bytes={half}-")]


def test_server_without_range_support_restarts_from_zero(tmp_path, fixture_files, server):
    dataset, bodies = fixture_files
    base, state = server
    state.ignore_range = True
    file = dataset.files[0]
    dest = tmp_path / file.name
    part_path(dest).write_bytes(bodies[file.name][:1000])
    download_file([f"{base}/{file.name}"], dest, (file.sha256,), timeout=TIMEOUT, progress=False)
    assert dest.read_bytes() == bodies[file.name]
    assert state.requests == [(f"/{file.name}", "bytes=1000-")]


def test_wrong_file_in_place_is_replaced_by_a_verified_download(tmp_path, fixture_files, server):
    dataset, bodies = fixture_files
    base, _ = server
    file = dataset.files[0]
    dest = tmp_path / "data" / dataset.name / file.name
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"an older, different file")
    assert dataset_status(dataset, tmp_path)[0].state == "mismatch"
    results = fetch_dataset(dataset, tmp_path, mirror=base, timeout=TIMEOUT, progress=False)
    assert (results[0].state, results[0].action) == ("verified", "downloaded")
    assert dest.read_bytes() == bodies[file.name]


def test_stale_partial_file_is_discarded_and_fetched_again(tmp_path, fixture_files, server):
    dataset, bodies = fixture_files
    base, state = server
    file = dataset.files[0]
    dest = tmp_path / file.name
    part_path(dest).write_bytes(b"\0" * 100)  # not the start of the file
    download_file([f"{base}/{file.name}"], dest, (file.sha256,), timeout=TIMEOUT, progress=False)
    assert dest.read_bytes() == bodies[file.name]
    assert state.requests == [(f"/{file.name}", "bytes=100-"), (f"/{file.name}", None)]


def test_unreachable_mirror_says_what_to_download_and_where(tmp_path, fixture_files, closed_port):
    dataset, _ = fixture_files
    mirror = f"http://127.0.0.1:{closed_port}"
    with pytest.raises(DownloadError) as caught:
        fetch_dataset(dataset, tmp_path, mirror=mirror, timeout=TIMEOUT, progress=False)
    message = str(caught.value)
    assert f"{len(dataset.files)} of {len(dataset.files)} files could not be downloaded" in message
    for file in dataset.files:
        dest = tmp_path.resolve() / "data" / dataset.name / file.name
        assert f"{file.name}: download it by hand and put it at {dest}" in message
        assert f"tried {mirror}/{file.name}" in message
        assert not dest.exists()
    assert dataset.homepage in message
    assert set(caught.value.failures) == {f"{mirror}/{f.name}" for f in dataset.files}


def test_next_mirror_is_tried_when_the_first_fails(tmp_path, fixture_files, server, closed_port):
    dataset, bodies = fixture_files
    base, state = server
    file = dataset.files[0]
    urls = [f"http://127.0.0.1:{closed_port}/{file.name}", f"{base}/missing-here", f"{base}/{file.name}"]
    found = download_file(urls, tmp_path / file.name, (file.sha256,), timeout=TIMEOUT, progress=False)
    assert found == file.sha256
    assert [path for path, _ in state.requests] == ["/missing-here", f"/{file.name}"]


def test_html_page_instead_of_the_file_is_rejected(tmp_path, fixture_files, server):
    dataset, _ = fixture_files
    base, state = server
    file = dataset.files[0]
    state.html.add(file.name)
    with pytest.raises(DownloadError, match="HTML page"):
        download_file([f"{base}/{file.name}"], tmp_path / file.name, (), timeout=TIMEOUT, progress=False)
    assert not (tmp_path / file.name).exists() and not part_path(tmp_path / file.name).exists()


def test_file_without_known_checksum_is_refused_unless_allowed(tmp_path, fixture_files, server):
    dataset, bodies = fixture_files
    base, state = server
    unknown = replace(dataset, files=tuple(replace(f, sha256=None, alt_sha256=()) for f in dataset.files))
    with pytest.raises(DownloadError, match="no sha256 for this file.*--allow-unverified"):
        fetch_dataset(unknown, tmp_path, mirror=base, timeout=TIMEOUT, progress=False)
    assert not (tmp_path / "data").exists() and state.requests == []  # nothing was even requested
    results = fetch_dataset(unknown, tmp_path, mirror=base, timeout=TIMEOUT, progress=False, allow_unverified=True)
    assert [r.state for r in results] == ["unverified"] * len(bodies)
    assert [r.sha256 for r in results] == [hashlib.sha256(bodies[f.name]).hexdigest() for f in dataset.files]


def test_plain_http_is_refused_except_on_loopback(tmp_path, fixture_files, server):
    dataset, bodies = fixture_files
    base, _ = server
    file = dataset.files[0]
    with pytest.raises(DownloadError, match="plain http is refused"):
        download_file([f"http://example.invalid/{file.name}"], tmp_path / file.name, file.accepted_sha256, timeout=TIMEOUT,
                      progress=False)
    with pytest.raises(DownloadError, match="scheme 'ftp' is refused"):
        download_file([f"ftp://example.invalid/{file.name}"], tmp_path / file.name, file.accepted_sha256, timeout=TIMEOUT,
                      progress=False)
    download_file([f"{base}/{file.name}"], tmp_path / file.name, file.accepted_sha256, timeout=TIMEOUT, progress=False)
    assert (tmp_path / file.name).read_bytes() == bodies[file.name]


def test_redirects_are_followed_only_to_the_registered_mirrors(tmp_path, fixture_files, server):
    dataset, bodies = fixture_files
    base, state = server
    file = dataset.files[0]
    port = base.rsplit(":", 1)[1]
    state.redirects["moved"] = f"http://127.0.0.1:{port}/{file.name}"  # same host: followed
    download_file([f"{base}/moved"], tmp_path / file.name, file.accepted_sha256, timeout=TIMEOUT, progress=False)
    assert (tmp_path / file.name).read_bytes() == bodies[file.name]

    (tmp_path / file.name).unlink()
    state.redirects["elsewhere"] = f"http://localhost:{port}/{file.name}"  # another host name: refused
    with pytest.raises(DownloadError, match="redirect to http://localhost:.* refused: host 'localhost' is not one of"):
        download_file([f"{base}/elsewhere"], tmp_path / file.name, file.accepted_sha256, timeout=TIMEOUT, progress=False)
    assert not (tmp_path / file.name).exists() and not part_path(tmp_path / file.name).exists()
    assert (f"/{file.name}", None) not in state.requests[2:]  # the refused target was never asked


def test_registry_is_well_formed():
    assert set(DATASETS) == {"trento", "houston2013", "augsburg", "muufl"}
    for dataset in DATASETS.values():
        names = [f.name for f in dataset.files]
        assert len(names) == len(set(names)), dataset.name
        assert dataset.homepage.startswith("https://")
        for file in dataset.files:
            assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in file.accepted_sha256), file.name
            assert all(url.startswith("https://") for url in file.urls), file.name
    assert DATASETS["houston2013"].registration_required
    assert not any(f.urls for f in DATASETS["houston2013"].files)


def test_registry_checksums_match_the_shared_pieces():
    present = {key: path for key, path in SHARED_FILES.items() if path.is_file()}
    if not present:
        pytest.skip(f"no shared data pieces at {SHARED}")
    for (dataset, name), path in present.items():
        file = next(f for f in DATASETS[dataset].files if f.name == name)
        assert sha256_of(path) == file.sha256, (dataset, name)
        assert path.stat().st_size == file.size, (dataset, name)


def test_cli_fetch_from_a_loopback_mirror(tmp_path, fixture_files, server, capsys):
    served, bodies = fixture_files
    if served.name not in DATASETS:
        pytest.skip(f"the real {served.name} pieces are not at {SHARED}")
    base, _ = server
    code = main(["fetch", served.name, "--dest", str(tmp_path), "--mirror", base, "--timeout", str(TIMEOUT)])
    out, err = capsys.readouterr()
    folder = tmp_path.resolve() / "data" / served.name
    # The files of the dataset that are not among the pieces get a 404: exit 1, the others arrive verified.
    unserved = [f.name for f in DATASETS[served.name].files if f.name not in bodies]
    assert unserved and code == 1
    for name in unserved:
        assert f"{name}: download it by hand and put it at {folder / name}" in err
        assert not (folder / name).exists()
    assert "HTTP 404" in err
    for name, body in bodies.items():
        assert re.search(rf"verified\s+{re.escape(name)}", out)
        assert (folder / name).read_bytes() == body

    assert main(["list", served.name, "--dest", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    for name in unserved:
        assert re.search(rf"missing\s+{re.escape(name)}", listing)
    for name in bodies:
        assert re.search(rf"verified\s+{re.escape(name)}", listing)


def test_cli_list_reports_missing_verified_mismatch(tmp_path, capsys):
    folder = tmp_path / "data" / "muufl"
    folder.mkdir(parents=True)
    (folder / "gt.mat").write_bytes(b"not the labels")
    (folder / "HSI.mat.part").write_bytes(b"half")
    assert main(["list", "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for dataset in DATASETS.values():
        assert f"{dataset.name}: {dataset.title}" in out
        assert str(tmp_path.resolve() / "data" / dataset.name) in out
    assert re.search(r"mismatch\s+gt\.mat", out)
    assert re.search(r"partial\s+HSI\.mat", out)
    assert re.search(r"missing\s+LiDAR\.mat", out)
    assert "registration required" in out


def test_cli_registration_only_dataset_fails_with_instructions(tmp_path, capsys):
    assert main(["fetch", "houston2013", "--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    folder = tmp_path.resolve() / "data" / "houston2013"
    assert "registration required" in err
    for file in DATASETS["houston2013"].files:
        assert f"put it at {folder / file.name}" in err
    assert not folder.exists()


def test_cli_usage_errors_exit_2(capsys):
    for argv in ([], ["fetch"], ["fetch", "pavia"], ["list", "--bogus"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2, argv
    capsys.readouterr()


def test_python_dash_m_entry_point(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.datasets", "list", "muufl", "--dest", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"missing\s+LiDAR\.mat", done.stdout)
    usage = subprocess.run(
        [sys.executable, "-m", "pipeline.datasets"], capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT
    )
    assert usage.returncode == 2
    assert "usage:" in usage.stderr
