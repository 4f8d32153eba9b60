"""Command line: ``python -m pipeline.datasets fetch NAME [--dest DIR] [--mirror URL]``, ``list [NAME]``
and ``build-benchmark NAME --dest DIR`` (a benchmark scene from ../shared/data, see ``benchmark_scenes``).

Exit codes: 0 done, 1 a dataset could not be fetched (the message says what to download by hand
and where to put it), 2 wrong usage.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pipeline.cli import guarded
from pipeline.datasets.benchmark_scenes import RECIPES, build_benchmark_scene
from pipeline.datasets.fetch import (
    FileState,
    dataset_dir,
    dataset_status,
    default_root,
    fetch_dataset,
)
from pipeline.datasets.registry import DATASETS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m pipeline.datasets``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.datasets",
        description="Download the public benchmarks into data/<name>/, sha256-verified and resumable.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    dest_help = f"root folder under which data/<name>/ is laid out (default: {default_root()})"

    fetch = commands.add_parser("fetch", help="download a dataset's missing files")
    fetch.add_argument("name", choices=sorted(DATASETS))
    fetch.add_argument("--dest", type=Path, default=None, help=dest_help)
    fetch.add_argument(
        "--mirror", default=None, metavar="URL_BASE", help="fetch <URL_BASE>/<file name> instead of the public mirrors"
    )
    fetch.add_argument("--timeout", type=float, default=30.0, help="seconds a connection or read may block")
    fetch.add_argument("--allow-unverified", action="store_true",
                       help="also install files the registry has no sha256 for (their content cannot be checked)")

    listing = commands.add_parser("list", help="datasets, their files and whether each is present and verified")
    listing.add_argument("name", nargs="?", choices=sorted(DATASETS))
    listing.add_argument("--dest", type=Path, default=None, help=dest_help)
    build = commands.add_parser(
        "build-benchmark", help="build a benchmark scene from the real pieces in ../shared/data (real LiDAR and labels, HS from real spectra)")
    build.add_argument("name", choices=sorted(RECIPES))
    build.add_argument("--dest", type=Path, required=True, help="folder for the scene's files, e.g. data/muufl-bench")
    build.add_argument("--seed", type=int, default=0, help="seed of the synthesis, clouds and LiDAR gap")
    return parser


def _describe(state: FileState) -> str:
    line = f"  {state.state:<10} {state.name}"
    if state.action:
        line += f"  ({state.action})"
    if state.state == "unverified":
        line += f"  sha256 {state.sha256} (no known checksum: not verified)"
    elif state.state == "mismatch":
        line += f"  sha256 {state.sha256} does not match the registry"
    return line


def _list(names: Sequence[str], root: Path | None) -> None:
    for name in names:
        dataset = DATASETS[name]
        print(f"{dataset.name}: {dataset.title}")
        print(f"  folder     {dataset_dir(dataset, root)}")
        for state in dataset_status(dataset, root):
            print(_describe(state))
        print(f"  source     {dataset.homepage}{'  (registration required)' if dataset.registration_required else ''}")
        print(f"  license    {dataset.license}")
        print(f"  cite       {dataset.citation}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (argparse exits with 2 on wrong usage)."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.command == "build-benchmark":
            for role, path in build_benchmark_scene(args.name, args.dest, args.seed).items():
                print(f"  {role:<10} {path}")
        elif args.command == "list":
            _list([args.name] if args.name else list(DATASETS), args.dest)
        else:
            print(f"{args.name} -> {dataset_dir(DATASETS[args.name], args.dest)}")
            fetch_dataset(
                args.name,
                args.dest,
                mirror=args.mirror,
                timeout=args.timeout,
                allow_unverified=args.allow_unverified,
                on_file=lambda state: print(_describe(state), flush=True),
            )
        return 0

    return guarded(body)
