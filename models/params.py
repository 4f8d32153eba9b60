"""Value rules of ``config.params`` keys: one test and its wording, shared by the model and the catalog check.

A model raises ``ValueError`` from :meth:`ParamRule.check` when it is built;
the pipeline reads a method's ``param_rules`` to reject the same value when a
catalog is loaded, naming the catalog key, before any data is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamRule:
    """What a parameter's value must be: ``accepts(value)``, worded as ``expected`` ("an odd number ...")."""

    accepts: Callable[[Any], bool]
    expected: str

    def check(self, key: str, value: Any) -> Any:
        """``value``, or ``ValueError("<key> must be <expected>, got <value>")``."""
        if not self.accepts(value):
            raise ValueError(f"{key} must be {self.expected}, got {value!r}")
        return value


def whole(value: Any) -> bool:
    """An integer, or a float with no fraction (YAML's ``4.0``); not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()


TRUE_OR_FALSE = ParamRule(lambda value: isinstance(value, bool), "true or false")
"""A switch: YAML's ``true``/``false`` only, so a quoted ``"false"`` is not read as on."""
