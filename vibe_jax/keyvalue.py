"""'key=value,key=value' strings: how a command line passes a dict (attack
parameters, the arguments after a config file's colon)."""

import ast

__all__ = ["parse"]


def parse(text: str | None) -> dict:
  """'rate=0.05,independent_fields=True,trigger_path=t.png' -> a dict of Python
  literals where they parse (0.05, True) and strings otherwise ('t.png').

  Raises:
    ValueError: an item that is not key=value, naming it.
  """
  out = {}
  for item in (text or "").split(","):
    if not item.strip():
      continue
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"{item!r} is not key=value")
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key.strip()] = value.strip()
  return out
