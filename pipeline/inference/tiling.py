"""The tile grid over a scene: windows of ``tile_size`` pixels aligned with the output chunks."""

from __future__ import annotations

import math

from pipeline.data.patches import Window


def tile_grid_shape(height: int, width: int, tile_size: int) -> tuple[int, int]:
    """Number of tile rows and tile columns covering a (height, width) scene."""
    return math.ceil(height / tile_size), math.ceil(width / tile_size)


def tile_windows(height: int, width: int, tile_size: int) -> list[tuple[tuple[int, int], Window]]:
    """Every tile as ((tile_row, tile_col), window), in raster order; edge tiles are cropped to the scene."""
    rows, cols = tile_grid_shape(height, width, tile_size)
    out = []
    for tr in range(rows):
        for tc in range(cols):
            r0, c0 = tr * tile_size, tc * tile_size
            out.append(((tr, tc), Window(r0, c0, min(tile_size, height - r0), min(tile_size, width - c0))))
    return out
