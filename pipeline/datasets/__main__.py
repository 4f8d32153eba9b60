"""``python -m pipeline.datasets``: see pipeline.datasets.cli."""

from pipeline.datasets.cli import main

raise SystemExit(main())
