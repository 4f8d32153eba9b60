"""Train a method on a catalog's labelled pixels: ``python -m pipeline.train CATALOG``.

Writes a safetensors checkpoint, the split, a training log and a loss curve
(see :mod:`pipeline.learn.training`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import configure_logging, guarded, open_catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.splitlines()[0])
    parser.add_argument("catalog", help="the catalog YAML file, or its URL")
    parser.add_argument("--scene", help="scene name (default: the first)")
    parser.add_argument("--method", help="registered method (default: the catalog's model.method)")
    parser.add_argument("--protocol", help="none | mmp | eta:<rate> | rates:<modality>=<rate>,...")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--output", type=Path, help="checkpoint folder")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> int:
        from pipeline.learn.training import parse_protocol, train

        catalog = open_catalog(args.catalog)
        protocol = parse_protocol(args.protocol) if args.protocol else None
        result = train(catalog, args.scene, args.method, args.seed, protocol, args.output)
        print(f"checkpoint: {result.checkpoint}")
        print(f"best validation OA: {result.best_val_oa:.4f} ({len(result.history)} epochs, {result.seconds:.1f} s)")
        return 0

    return guarded(body, expected=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
