"""A short run compiles each function once: the same jitted function compiled
twice (a static flag that changes, a `jax.jit` made anew at every call) costs the
quickstart seconds and a long run minutes."""

import collections
import json
import subprocess
import sys

from tests.helpers import ROOT

# Two compilations of one program have the same persistent-cache key (a hash of the
# program and its options); a fresh cache logs a miss, then a hit, for each key.
_SCRIPT = """
import json, logging, sys
import jax
from configs import quickstart
from vibe_jax.experiment import train_and_evaluate

seen = []

class Record(logging.Handler):
  def emit(self, record):
    if "compilation cache" in record.msg.lower() and " key " in record.msg:
      seen.append([str(a) for a in record.args])

logger = logging.getLogger("jax._src.compiler")
logger.addHandler(Record())
logger.setLevel(logging.DEBUG)
jax.config.update("jax_compilation_cache_dir", sys.argv[2])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
config = quickstart.get_config()
config.num_steps, config.estep.period, config.log_every = 100, 50, 50
config.checkpoint.every = 100
train_and_evaluate(config, sys.argv[1])
print(json.dumps(seen))
"""


def test_a_short_run_compiles_no_function_twice(tmp_path):
  out = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "run"),
                        str(tmp_path / "cache")], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, check=True)
  compiled = [tuple(c) for c in json.loads(out.stdout.strip().splitlines()[-1])]
  assert len(compiled) > 10  # the log was captured: a run compiles its steps
  twice = {name: n for (name, _), n in collections.Counter(compiled).items() if n > 1}
  assert not twice, f"compiled more than once (name: times): {twice}"
