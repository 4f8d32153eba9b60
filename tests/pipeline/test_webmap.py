"""python -m pipeline.webmap: writes the page beside the COGs, compares two runs, one error line on bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline.webmap import main


@pytest.fixture(scope="module")
def exported(make_exported_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "baseline" / "scene"
    folder.mkdir(parents=True)
    make_exported_run(folder, height=40, width=60)
    return folder


def panes(page: Path) -> list[dict]:
    return json.loads(re.search(r'id="mmlc-data">(.*?)</script>', page.read_text(), re.S)[1])["panes"]


def test_writes_map_html_beside_the_cogs(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(exported)]) == 0
    assert capsys.readouterr().out.strip() == str(exported / "map.html")
    assert [p["title"] for p in panes(exported / "map.html")] == ["baseline/scene"]


def test_compare_writes_two_panes(exported: Path, tmp_path: Path) -> None:
    assert main([str(exported), "--compare", str(exported)]) == 0
    assert len(panes(exported / "compare.html")) == 2
    assert main([str(exported), "--compare", str(exported), "--output", str(tmp_path / "x.html")]) == 0
    assert len(panes(tmp_path / "x.html")) == 2


def test_a_folder_without_exports_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {tmp_path / 'landcover.tif'}")
    assert not (tmp_path / "map.html").exists()
