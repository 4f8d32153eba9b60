"""Benchmark scenes and catalogs: the demo generator at a chosen size, written to disk, and catalogs on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.config.catalog import Catalog, parse_catalog
from pipeline.datasets.demo import (
    DEMO_CATALOG,
    FILES,
    demo_catalog_dict,
    generate_demo_scene,
)

ROOT = Path(__file__).resolve().parents[1]
TRENTO_SHAPE = (166, 600)  # rows, cols of the demo scene: Trento's size


def scaled_shape(base: tuple[int, int], scale: int) -> tuple[int, int]:
    """A scene ``scale`` times the area of ``base``: a square scale doubles both sides (4x -> 2x2), else rows."""
    side = round(scale**0.5)
    if side * side == scale:
        return base[0] * side, base[1] * side
    return base[0] * scale, base[1]


def generate_scene(folder: Path, shape: tuple[int, int], seed: int = 0) -> dict[str, Path]:
    """The demo scene's files at ``shape`` in ``folder`` (kept when already there)."""
    paths = {role: folder / name for role, name in FILES.items()}
    if all(p.exists() for p in paths.values()):
        return paths
    return generate_demo_scene(folder, seed=seed, height=shape[0], width=shape[1])


def demo_catalog(scene_folder: Path, output_folder: Path, **sections: Any) -> Catalog:
    return parse_catalog(demo_catalog_dict(scene_folder, output_folder, **sections), DEMO_CATALOG)


def write_catalog(data: dict[str, Any], path: Path) -> Path:
    """Write a catalog dict as YAML (absolute paths, so it resolves from anywhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
