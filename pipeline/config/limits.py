"""Size limits on what a user's files may expand to.

YAML aliases let a few lines stand for millions of values (the "billion laughs"): safe_load
shares the aliased objects, but anything that walks or serialises the document (the catalog
hash, a checkpoint's ``config.json``) expands them. Counting nodes with aliases expanded, and
stopping at the limit, bounds that work whatever the document is.
"""

from __future__ import annotations

from typing import Any

MAX_CATALOG_BYTES = 4 * 1024 * 1024  # a catalog file larger than this is refused before parsing
MAX_CATALOG_NODES = 200_000  # values in the whole catalog, aliases expanded
MAX_PARAMS_NODES = 1_000  # values under model.params (it is written into every checkpoint)
MAX_PARAMS_BYTES = 64 * 1024  # model.params as JSON


def expanded_nodes(document: Any, limit: int) -> int:
    """How many values ``document`` holds with aliases expanded; stops counting once above ``limit``."""
    count = 0
    stack = [document]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return count
