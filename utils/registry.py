"""A registry of lazy constructors keyed by the names used in YAML (one per kind, members listed where it is made)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Mapping, TypeVar, Union

T = TypeVar("T")


@dataclass(frozen=True)
class Lazy:
    """A member defined in another module, imported on first use: `module`.`attribute`."""

    module: str
    attribute: str

    def load(self) -> object:
        """The named attribute of the imported module."""
        return getattr(importlib.import_module(self.module), self.attribute)


class Registry(Generic[T]):
    """Maps a config name to a constructor; an unknown name fails listing the valid ones."""

    def __init__(self, kind: str, members: Mapping[str, Union[Callable[..., T], T, Lazy]] | None = None) -> None:
        self.kind = kind
        self._constructors: dict[str, Union[Callable[..., T], T, Lazy]] = dict(members or {})

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register `fn` under `name` (same module as the registry, or a test); names must be unique."""

        def add(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._constructors:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._constructors[name] = fn
            return fn

        return add

    def get(self, name: str) -> Callable[..., T]:
        """The constructor registered under `name` (a Lazy member is imported once, here)."""
        try:
            member = self._constructors[name]
        except KeyError:
            valid = ", ".join(sorted(self._constructors))
            raise KeyError(f"unknown {self.kind} '{name}'; valid names: {valid}") from None
        if isinstance(member, Lazy):
            member = self._constructors[name] = member.load()
        return member

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
