"""Method name -> classifier class. The pipeline builds models only through here."""

from __future__ import annotations

from collections.abc import Callable

from models.base import MissingModalityClassifier, ModelConfig

_REGISTRY: dict[str, type[MissingModalityClassifier]] = {}


def register(name: str) -> Callable[[type[MissingModalityClassifier]], type[MissingModalityClassifier]]:
    """Class decorator that registers a method under ``name``."""

    def decorate(cls: type[MissingModalityClassifier]) -> type[MissingModalityClassifier]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.method_name = name  # type: ignore[attr-defined]
        return cls

    return decorate


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_class(name: str) -> type[MissingModalityClassifier]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered methods: {available_methods()}") from None


def build_model(config: ModelConfig) -> MissingModalityClassifier:
    """Instantiate the method named by ``config.method``."""
    return method_class(config.method)(config)
