"""Sources to scene stores: ``python -m pipeline.ingest CATALOG [--scene NAME] [--force]``.

Reads every modality of each scene, aligns it on the scene grid, computes availability and
writes ``<output.folder>/<scene>/scene.zarr`` (see :mod:`pipeline.data.ingest`); no work when
the inputs are unchanged.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import configure_logging, guarded, open_catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("catalog", help="the catalog YAML file, or its URL")
    parser.add_argument("--scene", help="ingest only this scene")
    parser.add_argument("--force", action="store_true", help="rewrite the store even when its inputs are unchanged")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> int:
        from pipeline.data.ingest import ingest_scene

        catalog = open_catalog(args.catalog)
        scenes = [catalog.scene(args.scene)] if args.scene is not None else catalog.scenes
        for scene in scenes:
            print(ingest_scene(catalog, scene, force=args.force))
        return 0

    return guarded(body)


if __name__ == "__main__":
    sys.exit(main())
