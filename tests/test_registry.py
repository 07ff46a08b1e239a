"""The registry every name-picked component uses."""

import dataclasses

import pytest

from vibe_jax.registry import Registry


def test_register_build_and_errors_name_the_choices():
  registry = Registry("widget")

  @registry.register("round")
  @dataclasses.dataclass(frozen=True)
  class Round:
    radius: float = 1.0

  assert Round.name == "round" and registry.names() == ["round"]
  assert registry.build("round", radius=2.0) == Round(2.0)
  with pytest.raises(ValueError, match="unknown widget 'square'; known widgets: round"):
    registry.build("square")
  with pytest.raises(ValueError, match=r"'round' has no parameter\(s\) \['radus'\]"):
    registry.build("round", radus=2.0)
  with pytest.raises(ValueError, match="registered twice"):
    registry.register("round")(Round)
