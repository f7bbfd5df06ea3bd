"""Registry[T]: parts chosen by name in a job file. Adding a part is one file and one `@REGISTRY.register` line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from shoal.errors import ShoalError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, field: str):
        self.kind, self.field = kind, field  # e.g. "sync strategy", "sync": named in every error
        self._parts: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(part: T) -> T:
            if name in self._parts and self._parts[name] is not part:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._parts[name] = part
            return part

        return add

    def get(self, name: str) -> T:
        try:
            return self._parts[name]
        except KeyError:
            raise ShoalError(f"{self.field} = '{name}': no such {self.kind}; choose one of {', '.join(self.names())} "
                             f"(or add yours in a module named in `plugins`)") from None

    def names(self) -> list[str]:
        return sorted(self._parts)

    def __contains__(self, name: str) -> bool:
        return name in self._parts
