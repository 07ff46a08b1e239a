"""Small rules for config values; each returns a list of problems (empty if fine).

The rules of a config section are declared next to its defaults (`check_base` in
`vibe_jax.config`, `Defense.check` in each defense), so a new key gets its rule
where it is added. `validate` runs them all before any work starts.
"""

import math
from typing import Any, Iterable

import ml_collections

__all__ = ["integer", "number", "choice", "boolean", "text"]


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  value = config
  for part in key.split("."):
    value = value[part]
  return value


def integer(config, key: str, low: int | None = None, high: int | None = None) -> list[str]:
  """`key` is an int (not a bool) in [low, high]."""
  v = _get(config, key)
  if isinstance(v, bool) or not isinstance(v, int):
    return [f"config.{key} must be an integer, got {v!r}"]
  if low is not None and v < low:
    return [f"config.{key} must be >= {low}, got {v}"]
  if high is not None and v > high:
    return [f"config.{key} must be <= {high}, got {v}"]
  return []


def number(config, key: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False) -> list[str]:
  """`key` is a finite number in [low, high] (or (low, high] with `low_open`)."""
  v = _get(config, key)
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
    return [f"config.{key} must be a finite number, got {v!r}"]
  if low is not None and (v <= low if low_open else v < low):
    return [f"config.{key} must be {'>' if low_open else '>='} {low}, got {v}"]
  if high is not None and v > high:
    return [f"config.{key} must be <= {high}, got {v}"]
  return []


def choice(config, key: str, options: Iterable[Any]) -> list[str]:
  """`key` is one of `options`."""
  options = list(options)
  v = _get(config, key)
  if v not in options:
    return [f"config.{key} must be one of {options}, got {v!r}"]
  return []


def boolean(config, key: str) -> list[str]:
  """`key` is True or False."""
  v = _get(config, key)
  return [] if isinstance(v, bool) else [f"config.{key} must be True or False, got {v!r}"]


def text(config, key: str) -> list[str]:
  """`key` is a string."""
  v = _get(config, key)
  return [] if isinstance(v, str) else [f"config.{key} must be a string, got {v!r}"]
