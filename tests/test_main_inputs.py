"""Malformed input on the command line: exit code 2, one line on stderr naming the
problem, and every file already in the workdir unchanged."""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from tests.helpers import ROOT
from vibe_jax.data import badnets_digits, save_npz

QUICK = ("--config.num_steps=40", "--config.estep.period=20", "--config.log_every=20",
         "--config.checkpoint.every=20")


def _run(workdir, *args, config="configs/quickstart.py"):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "vibe_jax.main", f"--config={config}", f"--workdir={workdir}",
         "--config.progress_bar=False", *args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def _run_in_one_process(cases: dict) -> dict:
  """{case id: argv} -> {case id: {"code", "stdout", "stderr"}}, every case a full
  `main.run()` in one Python process (tests/cli_driver.py)."""
  ids = list(cases)
  argvs = [[f"--config={c}", f"--workdir={w}", "--config.progress_bar=False", *a]
           for c, w, a in (cases[i] for i in ids)]
  out = subprocess.run([sys.executable, "-m", "tests.cli_driver"], cwd=ROOT, input=json.dumps(argvs),
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  return dict(zip(ids, json.loads(out.stdout)))


def _one_line(result: dict, message: str) -> None:
  """Exit code 2 and exactly one stderr line containing `message`."""
  assert result["code"] == 2, result["stderr"]
  lines = result["stderr"].strip().splitlines()
  assert len(lines) == 1 and message in lines[0], result["stderr"]


def _files(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished quickstart run (shortened)."""
  workdir = tmp_path_factory.mktemp("finished")
  out = _run(workdir, *QUICK)
  assert out.returncode == 0, out.stderr
  return workdir


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """Bad data files and folders, made once."""
  root = tmp_path_factory.mktemp("inputs")
  good = badnets_digits(seed=0)

  def npz(name, **changes):
    save_npz(good._replace(**changes), root / f"{name}.npz")

  npz("good")
  x = good.train_features.copy()
  x[3, 5] = np.nan
  npz("nan", train_features=x)
  x = good.train_features.copy()
  x[0, 0] = np.inf
  npz("inf", train_features=x)
  npz("float_labels", train_labels=good.train_labels.astype(np.float32) + 0.5)
  test = good.test_labels.copy()
  test[0] = 50
  npz("test_label_50", test_labels=test)
  npz("one_class", train_labels=np.zeros_like(good.train_labels))
  npz("one_example", train_features=good.train_features[:1], train_labels=good.train_labels[:1],
      train_true_labels=good.train_true_labels[:1], train_poisoned=good.train_poisoned[:1])
  npz("empty_test", test_features=good.test_features[:0], test_labels=good.test_labels[:0])
  np.savez(root / "no_labels.npz", train_features=good.train_features)
  (root / "not_npz.npz").write_text("hello")
  rng = np.random.default_rng(0)
  for name in ("folder", "empty_class", "corrupt"):
    for split, n in (("train", 8), ("test", 4)):
      for c in range(2):
        (root / name / split / f"c{c}").mkdir(parents=True)
        for i in range(n):
          Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
              root / name / split / f"c{c}" / f"{i}.png")
  (root / "empty_class" / "train" / "c2").mkdir()
  (root / "corrupt" / "train" / "c1" / "3.png").write_bytes(b"not an image at all")
  (root / "empty_dataset" / "train").mkdir(parents=True)
  (root / "empty_dataset" / "test").mkdir(parents=True)
  (root / "syntax.py").write_text("def get_config(:\n")
  (root / "no_get_config.py").write_text("X = 1\n")
  (root / "a_file").write_text("")
  return root


def _images(root, name="folder", *extra):
  return ("--config.data.source=images", f"--config.data.dataset={root / name}",
          "--config.model.backbone=small_cnn", "--config.batch_size=4",
          "--config.num_steps=2", "--config.estep.period=1", *extra)


# (arguments, text the one line must contain); run in a finished quickstart workdir.
CONFIG_CASES = [
    (("--config.num_steps=0",), "config.num_steps must be >= 1"),
    (("--config.num_steps=-5",), "config.num_steps must be >= 1"),
    (("--config.batch_size=0",), "config.batch_size must be >= 1"),
    (("--config.estep.period=0",), "config.estep.period"),
    (("--config.estep.chunk_size=0",), "config.estep.chunk_size"),
    (("--config.log_every=0",), "config.log_every"),
    (("--config.checkpoint.every=0",), "config.checkpoint.every"),
    (("--config.checkpoint.max_to_keep=0",), "config.checkpoint.max_to_keep"),
    (("--config.model.kappa=0",), "config.model.kappa must be > 0"),
    (("--config.model.kappa=-1",), "config.model.kappa must be > 0"),
    (("--config.model.nu=0",), "config.model.nu"),
    (("--config.model.prior_temperature=0",), "config.model.prior_temperature"),
    (("--config.estep.epsilon=0",), "config.estep.epsilon must be > 0"),
    (("--config.estep.epsilon=-0.1",), "config.estep.epsilon must be > 0"),
    (("--config.estep.threshold=0",), "config.estep.threshold"),
    (("--config.estep.max_iterations=0",), "config.estep.max_iterations"),
    (("--config.optim.lr.mu=nan",), "config.optim.lr.mu must be a finite number"),
    (("--config.optim.lr.backbone=inf",), "config.optim.lr.backbone must be a finite"),
    (("--config.optim.lr.prior=-0.1",), "config.optim.lr.prior must be >= 0"),
    (("--config.optim.momentum=1.5",), "config.optim.momentum"),
    (("--config.optim.weight_decay=-1",), "config.optim.weight_decay"),
    (("--config.data.target=99",), "config.data.target must be <= 9"),
    (("--config.data.patch=0",), "config.data.patch"),
    (("--config.data.poison_rate=1.5",), "config.data.poison_rate"),
    (("--config.model.variant=B",), "config.model.variant"),
    (("--config.data.source=hdf5",), "config.data.source"),
    (("--config.seed=-1",), "config.seed"),
    (("--config.model.input_size=-1",), "config.model.input_size"),
    (("--config.data.train_subset=-3",), "config.data.train_subset"),
    (("--config.leiden.delta=0",), "config.leiden.delta"),
    (("--config.leiden.num_neighbors=0",), "config.leiden.num_neighbors"),
    (("--config.ssl.batch_size=0",), "config.ssl.batch_size"),
    (("--config.ssl.num_steps=0",), "config.ssl.num_steps"),
    (("--config.baseline.lr=-0.1",), "config.baseline.lr"),
    (("--config.defenses=none,vibes",), "unknown ['vibes']"),
    (("--config.defenses=",), "config.defenses"),
    (("--config.evaluators=acc",), "unknown ['acc']"),
    (("--config.model.vairant=A",), "unknown config key 'vairant'"),
    (("--config.num_steps=many",), "--config.num_steps=many"),
    (("--config.seed=1",), "holds another run"),
    (("--config.num_steps=1000",), "num_steps 40 -> 1000"),
    (("unexpected",), "unexpected arguments"),
    (("--config.data.placement=disk",), "config.data.placement must be one of"),
    (("--config.data.device_share=0",), "config.data.device_share must be > 0"),
]

# Multi-host settings start JAX's distributed runtime, which is process-global:
# each runs in its own process.
MULTIHOST_CASES = [
    # settings that cannot work, and a coordinator nobody runs
    (("--num_processes=2", "--process_id=2", "--coordinator_address=127.0.0.1:1234"),
     "--process_id must be in 0 .. 1"),
    (("--coordinator_address=nohost",), "--coordinator_address must be host:port"),
    (("--distributed=on",), "nothing says how to connect"),
    (("--num_processes=2", "--process_id=1", "--coordinator_address=127.0.0.1:9",
      "--distributed_timeout=2"), "cannot reach the coordinator at 127.0.0.1:9 within 2 s"),
]


@pytest.mark.parametrize("args,message", MULTIHOST_CASES)
def test_bad_multihost_settings_stop_with_one_line_and_touch_nothing(tmp_path, finished, args,
                                                                    message):
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  before = _files(workdir)
  out = _run(workdir, *QUICK, *args)
  _one_line({"code": out.returncode, "stderr": out.stderr}, message)
  after = _files(workdir)
  after.pop("error.log", None)  # the traceback of the refusal, a new file
  assert after == before


# (arguments or a function of the inputs folder, message); run in a new workdir.
DATA_CASES = [
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'nan.npz'}"),
     "train_features has 1 NaN or infinite values"),
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'inf.npz'}"),
     "train_features has 1 NaN or infinite values"),
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'float_labels.npz'}"),
     "train_labels must be integers"),
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'test_label_50.npz'}"),
     "test_labels has label 50, but there are 10 classes"),
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'one_class.npz'}"),
     "fewer than two classes"),
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'one_example.npz'}"),
     "fewer than two classes"),
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'empty_test.npz'}"),
     "test_features is empty"),
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'no_labels.npz'}"),
     "lacks ['train_labels'"),
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'missing.npz'}"),
     "missing.npz' does not exist"),
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'not_npz.npz'}"),
     "not_npz.npz"),
    (lambda r: ("--config.data.source=npz", f"--config.data.path={r / 'good.npz'}",
                "--config.data.num_classes=5"), "has label 9, but there are 5 classes"),
    (lambda r: ("--config.batch_size=100000",), "config.batch_size is 100000, but the "
     "training set has only"),
    (lambda r: _images(r, "folder", "--config.data.attack_params=rate=abc"),
     "rate must be float, got 'abc'"),
    (lambda r: _images(r, "folder", "--config.data.attack_params=rate=1.5"),
     "rate must be in [0, 1], got 1.5"),
    (lambda r: _images(r, "folder", "--config.data.attack_params=target=99"),
     "target must be a class in [0, 2)"),
    (lambda r: _images(r, "folder", "--config.data.attack_params=strength=3"),
     "has no parameter(s) ['strength']"),
    (lambda r: _images(r, "folder", "--config.data.attack_params=rate"),
     "is not key=value"),
    (lambda r: _images(r, "folder", "--config.data.train_subset=1000"),
     "config.data.train_subset is 1000, but the train split has only 16 images"),
    (lambda r: _images(r, "folder", "--config.batch_size=64"),
     "config.batch_size is 64, but the training set has only 16"),
    (lambda r: _images(r, "empty_class"), "class folder"),
    (lambda r: _images(r, "corrupt"), "3.png' cannot be decoded"),
    (lambda r: _images(r, "empty_dataset"), "has no images under train/"),
    (lambda r: _images(r, "no_such_folder"), "no_such_folder"),
    (lambda r: _images(r, "folder", "--config.model.backbone=resnet7"),
     "config.model.backbone must be one of"),
    (lambda r: _images(r, "folder", "--config.model.backbone="), "images need"),
]


FILE_CASES = [
    ("{r}/syntax.py", "{t}/run", "cannot load --config"),
    ("{r}/no_get_config.py", "{t}/run", "cannot load --config"),
    ("configs/no_such_config.py", "{t}/run", "no_such_config.py' does not exist"),
    ("configs/quickstart.py", "{r}/a_file", "is a file, not a directory"),
    ("configs/quickstart.py", "/dev/null/run", "cannot create --workdir"),
    ("configs/quickstart.py", "gs://bucket/run", "is a URL"),
]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory, finished, inputs):
  """Every in-process case below, run once in one process: {case id: (result,
  workdir, files of the workdir before)}."""
  root = tmp_path_factory.mktemp("refusals")
  cases, before, workdirs = {}, {}, {}
  quickstart = "configs/quickstart.py"
  for i, (args, _) in enumerate(CONFIG_CASES):  # in a copy of a finished run
    workdir = root / f"config{i}"
    shutil.copytree(finished, workdir)
    before[f"config{i}"] = _files(workdir)
    cases[f"config{i}"] = (quickstart, workdir, [*QUICK, *args])
  for i, (args, _) in enumerate(DATA_CASES):  # in a new workdir
    cases[f"data{i}"] = (quickstart, root / f"data{i}", [*QUICK, *args(inputs)])
  for i, (config, workdir, _) in enumerate(FILE_CASES):
    fill = lambda s: s.format(r=inputs, t=root / f"file{i}")
    cases[f"file{i}"] = (fill(config), fill(workdir), list(QUICK))
  results = _run_in_one_process(cases)
  return {k: (results[k], pathlib.Path(cases[k][1]), before.get(k)) for k in cases}


# One worker runs the module's in-process cases (pytest-xdist --dist loadgroup), so
# that the process running them starts once.
in_one_process = pytest.mark.xdist_group("cli_refusals")


@in_one_process
@pytest.mark.parametrize("case,message", [(f"config{i}", m) for i, (_, m) in
                                          enumerate(CONFIG_CASES)])
def test_bad_config_values_stop_with_one_line_and_touch_nothing(refusals, case, message):
  result, workdir, before = refusals[case]
  _one_line(result, message)
  after = _files(workdir)
  after.pop("error.log", None)  # the traceback of the refusal, a new file
  assert after == before


@in_one_process
@pytest.mark.parametrize("case,message", [(f"data{i}", m) for i, (_, m) in
                                          enumerate(DATA_CASES)])
def test_bad_data_stops_with_one_line_and_writes_no_result(refusals, case, message):
  result, workdir, _ = refusals[case]
  _one_line(result, message)
  # Stopped before any result: at most the refusal's traceback was written.
  assert not workdir.exists() or sorted(p.name for p in workdir.iterdir()) == ["error.log"]


@in_one_process
@pytest.mark.parametrize("case,message", [(f"file{i}", m) for i, (*_, m) in
                                          enumerate(FILE_CASES)])
def test_bad_config_file_or_workdir_is_one_line(refusals, case, message):
  _one_line(refusals[case][0], message)


def test_skipping_bad_images_counts_them(tmp_path, inputs):
  out = _run(tmp_path / "run", *QUICK, *_images(inputs, "corrupt"),
             "--config.data.skip_bad_images=True", "--config.defenses=vibe")
  assert out.returncode == 0, out.stderr
  assert "skipping 1 of 16 training images that do not decode" in out.stderr


def test_a_bug_exits_1_with_its_traceback_and_where_to_report_it(tmp_path):
  script = ("import sys; from vibe_jax import experiment, main\n"
            "def broken(*a, **k): raise RuntimeError('boom')\n"
            "experiment.train_and_evaluate = broken\n"
            f"sys.argv = ['main', '--config=configs/quickstart.py', '--workdir={tmp_path}']\n"
            "main.run()\n")
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert out.returncode == 1
  assert "Traceback" in out.stderr and "RuntimeError: boom" in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith("FATAL internal error: this is a bug")
