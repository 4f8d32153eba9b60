"""Shared fixtures: a small generated demo scene, catalogs pointing at it, and one trained checkpoint.

The scene is made by the project's own generator (``pipeline.datasets.demo``) at a reduced
size, written as GeoTIFFs, so the tests go through the same readers as users.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.config.catalog import Catalog, parse_catalog
from pipeline.datasets.demo import demo_catalog_dict, generate_demo_scene

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SMALL_SHAPE = (64, 160)


@pytest.fixture(scope="session")
def small_demo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 64 x 160 demo scene (same generator and layout rules as catalogs/demo.yaml)."""
    folder = tmp_path_factory.mktemp("small-demo")
    return generate_demo_scene(folder, seed=4, height=SMALL_SHAPE[0], width=SMALL_SHAPE[1])  # seed 4: five of the six classes labelled


def small_demo_dict(files: dict[str, Path], output: Path, **sections: Any) -> dict[str, Any]:
    """catalogs/demo.yaml re-pointed at the small scene's files, with fast training settings.

    ``sections`` replace keys of the top-level sections, e.g. ``model={"method": "baseline"}``.
    """
    data = demo_catalog_dict(files["hs"].parent, output)
    data["output"]["tile_size"] = 32
    # validation pixels as a catalog asking for them has (tests of the validation pass and the split use them)
    data["training"].update({"samples_per_class": 40, "epochs": 2, "batch_size": 64, "max_steps": 8, "validation_fraction": 0.2})
    data["cluster"] = {"workers": 1, "threads_per_worker": 1}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def small_demo_catalog(files: dict[str, Path], output: Path, **sections: Any) -> Catalog:
    return parse_catalog(small_demo_dict(files, output, **sections), ROOT / "catalogs" / "demo.yaml")


@pytest.fixture
def small_demo_catalog_factory(small_demo_files: dict[str, Path]) -> Callable[..., Catalog]:
    """``factory(output, **sections)``: :func:`small_demo_catalog` on the session's small scene."""
    return lambda output, **sections: small_demo_catalog(small_demo_files, output, **sections)


@pytest.fixture
def demo_catalog(small_demo_files: dict[str, Path], tmp_path: Path) -> Catalog:
    """A fresh catalog on the small scene, writing into this test's tmp_path."""
    return small_demo_catalog(small_demo_files, tmp_path / "out")


@pytest.fixture(scope="session")
def trained_demo(small_demo_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Catalog, Path]:
    """A catalog on the small scene and a MaMOL checkpoint trained on it once for the whole session."""
    from pipeline.learn.training import train

    out = tmp_path_factory.mktemp("trained-demo")
    catalog = small_demo_catalog(small_demo_files, out)
    result = train(catalog, progress=False)
    return catalog, result.checkpoint


def catalog_with_checkpoint(catalog: Catalog, checkpoint: Path, output: Path) -> Catalog:
    """A copy of ``catalog`` that maps with ``checkpoint`` into ``output``."""
    data = copy.deepcopy(catalog.model_dump(mode="json"))
    data["model"]["checkpoint"] = str(checkpoint)
    data["output"]["folder"] = str(output)
    return parse_catalog(data, catalog.path)


@pytest.fixture
def with_checkpoint() -> Callable[[Catalog, Path, Path], Catalog]:
    """:func:`catalog_with_checkpoint`, for tests that map a catalog with another checkpoint."""
    return catalog_with_checkpoint
