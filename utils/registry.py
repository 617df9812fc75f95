"""A registry of lazy constructors keyed by the names used in YAML (one per kind)."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a config name to a constructor; an unknown name fails listing the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._constructors: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register `fn` under `name`; names must be unique."""

        def add(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._constructors:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._constructors[name] = fn
            return fn

        return add

    def get(self, name: str) -> Callable[..., T]:
        """The constructor registered under `name`."""
        try:
            return self._constructors[name]
        except KeyError:
            valid = ", ".join(sorted(self._constructors))
            raise KeyError(f"unknown {self.kind} '{name}'; valid names: {valid}") from None

    def build(self, name: str, *args, **kwargs) -> T:
        """Call the constructor registered under `name`."""
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._constructors)

    def __contains__(self, name: object) -> bool:
        return name in self._constructors

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
