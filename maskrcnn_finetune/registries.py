"""A registry: names -> objects, each name registered once.

As torchvision's ``register_model`` and fvcore's ``Registry`` do, a second registration under a
name is refused, never a silent replacement; the message names both registrations (module and
function), so whoever added the second finds the first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from maskrcnn_finetune.errors import ConfigError, KitError

T = TypeVar("T")


def place_of(obj) -> str:
    """Where ``obj`` was defined: ``module.qualified_name`` (the function or class registered)."""
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"


class Registry(Mapping[str, T], Generic[T]):
    """Names -> objects of one kind, filled by :meth:`register`; reads as a read-only mapping.

    Args:
        kind: what an entry is, for messages ("backbone", "engine").
        names: the only names an entry may have (None: any). A registry whose names come from a
            list kept elsewhere (the engines', :data:`maskrcnn_finetune.model_format.ENGINES`)
            refuses a name missing there.
    """

    def __init__(self, kind: str, names: Iterable[str] | None = None) -> None:
        self.kind = kind
        self.names = tuple(names) if names is not None else None
        self._entries: dict[str, T] = {}
        self._places: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, place: str | None = None):
        """Adds ``obj`` under ``name``; without ``obj``, a decorator that adds the function it decorates.

        Args:
            place: the registration to name in messages (default: ``obj``'s module and name).

        Returns:
            ``obj`` (the decorated function, unchanged).

        Raises:
            ValueError: ``name`` is registered already (both places named), or is not one of ``names``.
        """
        if obj is None:
            return lambda fn: self.register(name, fn, place=place)
        place = place or place_of(obj)
        if self.names is not None and name not in self.names:
            raise ValueError(f"{place} registers the {self.kind} '{name}', which is not one of {', '.join(self.names)}; "
                             "add the name to that list first")
        if name in self._entries:
            raise ValueError(f"the {self.kind} '{name}' is registered twice: first by {self._places[name]}, then by "
                             f"{place}; give the second one another name")
        self._entries[name] = obj
        self._places[name] = place
        return obj

    def place(self, name: str) -> str:
        """The registration of ``name`` (module and function)."""
        return self._places[name]

    def lookup(self, name: str, error: type[KitError] = ConfigError, hint: str = "") -> T:
        """The entry ``name``.

        Raises:
            ``error`` (ConfigError by default): an unknown name; the message lists the known ones.
        """
        if name not in self._entries:
            raise error(f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(self._entries))}{hint}")
        return self._entries[name]

    def missing(self) -> list[str]:
        """The names of ``names`` that have no entry yet."""
        return [n for n in self.names or () if n not in self._entries]

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

