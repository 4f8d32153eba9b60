"""Pretrain the backbone on the catalog's pixels, labels unused: ``python -m pipeline.pretrain CATALOG``.

Masked modelling over pixel tokens (see :mod:`pipeline.learn.pretraining`);
prints the path of the ``backbone.safetensors`` to put in ``model.pretrained``
(or set ``model.pretrain: true`` and the pipeline uses it by itself).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import configure_logging, guarded, open_catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.pretrain", description=__doc__.splitlines()[0])
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--steps", type=int, help="override model.pretrain.steps")
    parser.add_argument("--output", type=Path, help="folder for the result (default: <output.folder>/pretrained/<hash>)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> int:
        from pipeline.config.catalog import Pretrain
        from pipeline.learn.pretraining import pretrain, pretrain_settings

        catalog = open_catalog(args.catalog)
        settings = pretrain_settings(catalog)
        if args.steps:
            settings = Pretrain(**{**settings.model_dump(), "steps": args.steps})
        catalog.model.pretrain = settings
        path = pretrain(catalog, args.output, progress=not args.quiet)
        print(path)
        return 0

    return guarded(body, expected=(ValueError, KeyError))


if __name__ == "__main__":
    sys.exit(main())
