"""One registry for everything picked by name from a config: attacks, defenses,
evaluators, self-supervised methods.

A registered class is a frozen dataclass whose fields are its parameters;
`Registry.build(name, **params)` makes one, naming an unknown name (with the
choices) or an unknown parameter (with the fields it has). `vibe_jax.attacks.base`
is the model every registry follows.
"""

import dataclasses
from typing import Callable, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
  """Classes registered under names, for one `kind` of thing ("attack", ...)."""

  def __init__(self, kind: str):
    self.kind = kind
    self._classes: dict[str, type[T]] = {}

  def register(self, name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: registers the class as `name` and sets its `name`."""

    def wrap(cls):
      if name in self._classes:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      cls.name = name
      self._classes[name] = cls
      return cls

    return wrap

  def names(self) -> list[str]:
    """The registered names, sorted."""
    return sorted(self._classes)

  def get(self, name: str) -> type[T]:
    """The class registered as `name`.

    Raises:
      ValueError: unknown name, listing the known ones.
    """
    if name not in self._classes:
      raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: "
                       f"{', '.join(self.names())}")
    return self._classes[name]

  def build(self, name: str, **params) -> T:
    """An instance of `name` with `params` (its dataclass fields).

    Raises:
      ValueError: unknown name or parameter, naming it and the choices.
    """
    cls = self.get(name)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(params) - fields)
    if unknown:
      raise ValueError(f"{self.kind} {name!r} has no parameter(s) {unknown}; it has "
                       f"{sorted(fields)}")
    return cls(**params)
