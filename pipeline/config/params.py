"""``model.params`` checked when the catalog is read, against the vocabularies of the registered methods.

A method's ``default_params`` (in ``models/``) are its vocabulary: a key no registered method knows
is a misspelling; a key of another method is allowed (one catalog serves every method an evaluation
compares) and ignored by the chosen one. A value must have the type of the key's default (any number
for a numeric default; any plain value where every default is ``None``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pipeline.config.errors import CatalogError
from pipeline.config.limits import MAX_PARAMS_BYTES, MAX_PARAMS_NODES, expanded_nodes
from pipeline.storage import Location

if TYPE_CHECKING:
    from models.params import ParamRule

_SCALARS = (type(None), bool, int, float, str)


def method_vocabularies() -> dict[str, dict[str, Any]]:
    """``{method: default_params}`` of every registered method."""
    from models import available_methods, method_class

    return {name: dict(getattr(method_class(name), "default_params", None) or {}) for name in available_methods()}


def method_param_rules(method: str) -> dict[str, ParamRule]:
    """The value rules of ``method``'s parameters (``param_rules`` of its class in ``models/``)."""
    from models import method_class

    return dict(getattr(method_class(method), "param_rules", None) or {})


def _expected_type(defaults: list[Any]) -> tuple[str, tuple[type, ...]]:
    """What a value must be, from the defaults the methods give the key."""
    typed = [d for d in defaults if d is not None]
    if not typed:
        return "a number, a string, true/false or null", _SCALARS
    first = typed[0]
    if isinstance(first, bool):
        return "true or false", (bool,)
    if isinstance(first, (int, float)):
        return "a number", (int, float)
    if isinstance(first, str):
        return "a string", (str,)
    return f"a {type(first).__name__}", (type(first),)


def check_model_params(method: str, params: dict[str, Any], catalog_file: Location | None) -> None:
    """Raise :class:`CatalogError` naming ``model.params.<key>`` for an unknown key, a wrong type or a value its rule refuses."""
    vocabularies = method_vocabularies()
    if method not in vocabularies:
        raise CatalogError(catalog_file, "model.method", f"a registered method ({', '.join(sorted(vocabularies))})", repr(method))
    if expanded_nodes(params, MAX_PARAMS_NODES) > MAX_PARAMS_NODES:
        raise CatalogError(catalog_file, "model.params", f"at most {MAX_PARAMS_NODES} values (aliases expanded)", "more")
    rules = method_param_rules(method)
    for key, value in params.items():
        where = f"model.params.{key}"
        defaults = [v[key] for v in vocabularies.values() if key in v]
        if not defaults:
            known = sorted(vocabularies[method])
            raise CatalogError(catalog_file, where, f"a parameter of {method} ({', '.join(known)}) or of another "
                               "registered method (misspelt or unknown)", repr(key))
        wording, types = _expected_type(defaults)
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise CatalogError(catalog_file, where, wording, f"{type(value).__name__} {_short(value)}")
        if value is None and types != _SCALARS and None not in defaults:
            raise CatalogError(catalog_file, where, wording, "null")
        rule = rules.get(key)
        if rule is not None and value is not None and not rule.accepts(value):
            raise CatalogError(catalog_file, where, rule.expected, _short(value))
    size = len(json.dumps(params, default=str))
    if size > MAX_PARAMS_BYTES:
        raise CatalogError(catalog_file, "model.params", f"at most {MAX_PARAMS_BYTES} bytes as JSON", f"{size} bytes")


def check_dense_crops(method: str, params: dict[str, Any], crop_size: int, context: int, catalog_file: Location | None) -> None:
    """Raise :class:`CatalogError` naming ``training.dense.<key>`` when a crop is not whole windows of the method's model."""
    window = params.get("window_size", method_vocabularies().get(method, {}).get("window_size"))
    if not isinstance(window, int) or window < 1:
        return  # the method has no dense path (or its window is reported by the model itself)
    for key, value in (("crop_size", crop_size), ("context", context)):
        if value % window:
            raise CatalogError(catalog_file, f"training.dense.{key}", f"a multiple of the model's window_size ({window})", str(value))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
