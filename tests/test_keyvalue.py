"""key=value strings from the command line."""

import pytest

from vibe_jax import keyvalue


def test_values_parse_as_python_literals_or_strings():
  assert keyvalue.parse("rate=0.05,independent_fields=True,trigger_path=t.png,k=4") == {
      "rate": 0.05, "independent_fields": True, "trigger_path": "t.png", "k": 4}
  assert keyvalue.parse("") == keyvalue.parse(None) == {}
  with pytest.raises(ValueError, match="key=value"):
    keyvalue.parse("rate")
  with pytest.raises(ValueError, match="key=value"):
    keyvalue.parse("=3")
