"""Web map of a run's exports: ``python -m pipeline.webmap OUTPUT_FOLDER [--compare OTHER_FOLDER]``.

Writes one self-contained HTML page (Leaflet inlined, opens from disk with no network) beside the
COGs: ``map.html``, or ``compare.html`` with ``--compare`` (two runs side by side); ``--output``
names another file. The logic is in :mod:`pipeline.outputs.webmap`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import guarded

COMPARE = "compare.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.webmap", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run's export folder (landcover.tif, confidence.tif, availability.tif)")
    parser.add_argument("--compare", type=Path, metavar="OTHER_FOLDER",
                        help="a second run's export folder, shown side by side in synchronised panes")
    parser.add_argument("--output", type=Path,
                        help=f"the HTML file to write (default: FOLDER/map.html, FOLDER/{COMPARE} with --compare)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="overlay images at most this many pixels a side (default 1024)")
    args = parser.parse_args(argv)

    def body() -> int:
        from pipeline.outputs.webmap import MAX_SIDE, WEB_MAP, write_web_map

        default = args.folder / (WEB_MAP if args.compare is None else COMPARE)
        path = write_web_map(args.folder, args.output or default, args.compare, args.max_side or MAX_SIDE)
        print(path)
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
