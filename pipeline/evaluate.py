"""The papers' protocols: ``python -m pipeline.evaluate CATALOG --methods a,b --protocol mamol-table1``.

OA, AA, Cohen's kappa, per-class accuracy and confusion matrices per setting, method and seed,
as Markdown, CSV and JSON tables (see :mod:`pipeline.learn.evaluation`), beside an
availability-blind random forest on the same training pixels (the floor), and OA per
availability pattern and per footprint of the catalog's clouds and failures.

Runs split over jobs or machines (``--seeds 0``, ``--seeds 1``, ``--rows 5``, ...) are put
back into one table, re-aggregated over seeds::

    python -m pipeline.evaluate --merge eval-s0 eval-s1 eval-s2 --output eval
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import configure_logging, guarded, open_catalog
from pipeline.config.errors import InputError
from pipeline.learn.mask_draws import DEFAULT_MASK_DRAWS
from pipeline.storage import is_remote


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("catalog", nargs="?", help="the catalog YAML file, or its URL")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="RESULTS",
                        help="instead of running: merge these evaluations (folders or results.json files) into --output")
    parser.add_argument("--methods", help="comma-separated, e.g. baseline,mamol (ablations: mamol:use_dynamic=false)")
    parser.add_argument("--protocol", default="mamol-table1", help="scene (the catalog's protocol, tested on the scene's real availability) | mamol-table1 | mamol-table3 | mamol-table5 | lvpcnet-table1")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the catalog's training.seed)")
    parser.add_argument("--data-seed", type=int, help="hold the split, test pixels and test mask at this seed: --seeds "
                        "then vary only the training, and the spread over them is the training's alone")
    parser.add_argument("--scene")
    parser.add_argument("--output", type=Path, help="folder for the tables (default: <output.folder>/<scene>/evaluation/<protocol>)")
    parser.add_argument("--max-test-pixels", type=int, default=0,
                        help="stratified cap on test pixels (default 0: every test pixel; a cap of 3000 moves OA by "
                             "about a point from seed to seed on its own)")
    parser.add_argument("--epochs", type=int, help="override training.epochs")
    parser.add_argument("--rows", help="comma-separated 0-based rows of the protocol to run (default: all)")
    parser.add_argument("--inference", choices=("auto", "dense", "patch", "both"),
                        help="train and test on the dense or the patch path (default: the catalog's model.inference; "
                             "dense: dense for methods that have it; auto: dense where a method's dense path held its accuracy, "
                             "MaMOL, and the baseline and MMP on a frozen pretrained backbone, patches for the others; patch: patches); "
                             "both: each dense method on both, side by side")
    parser.add_argument("--no-pattern-sweep", action="store_true",
                        help="skip testing every test pixel under every pattern of the row (the row's expected OA and "
                             "per-pattern OA on one set of pixels; on the patch path it adds about half a run's time)")
    parser.add_argument("--mask-draws", type=int, default=DEFAULT_MASK_DRAWS,
                        help=f"test masks a dense run is also scored under, the OA averaged over them (default "
                             f"{DEFAULT_MASK_DRAWS}: the row's own and {DEFAULT_MASK_DRAWS - 1} more, a dense pass each; 0 skips; the patch "
                             "path and the floor take the exact mean from the pattern sweep)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if (args.catalog is None) == (args.merge is None):
        parser.error("give a catalog to evaluate, or --merge RESULTS... --output DIR")
    if args.mask_draws < 0:
        parser.error(f"--mask-draws: expected 0 or more test masks, found {args.mask_draws}")
    if args.merge and args.output is None:
        parser.error("--merge needs --output DIR")
    configure_logging()

    def merge() -> int:
        from pipeline.learn.evaluation import merge_results, read_results, write_tables

        results = merge_results({path: read_results(path) for path in args.merge})
        args.output.mkdir(parents=True, exist_ok=True)
        write_tables(results, args.output)
        print((args.output / "table.md").read_text())
        print(f"tables in {args.output} ({len(results['runs'])} runs from {len(args.merge)} evaluations)")
        return 0

    def body() -> int:
        from pipeline.learn.evaluation import default_methods, evaluate

        catalog = open_catalog(args.catalog)
        if args.epochs:
            catalog.training.epochs = args.epochs
        scene = catalog.scene(args.scene)
        methods = args.methods.split(",") if args.methods else default_methods(args.protocol, catalog)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [catalog.training.seed]
        if args.output is None and is_remote(catalog.output.folder):  # tables, figures and checkpoints are local files
            raise InputError(catalog.path, "output.folder", "a local folder for the evaluation (or --output DIR)",
                             str(catalog.output.folder))
        output = args.output or Path(catalog.output.folder) / scene.name / "evaluation" / args.protocol
        rows = [int(r) for r in args.rows.split(",")] if args.rows else None
        results = evaluate(catalog, args.protocol, methods, seeds, output, scene.name, args.max_test_pixels or None,
                           not args.quiet, rows, args.inference, args.data_seed, pattern_sweep=not args.no_pattern_sweep,
                           mask_draws=args.mask_draws)
        print((output / "table.md").read_text())
        print(f"tables in {output} ({results['seconds']:.0f} s)")
        return 0

    return guarded(merge if args.merge else body, expected=(ValueError, KeyError))


if __name__ == "__main__":
    sys.exit(main())
