"""scikit-learn's 8x8 digits read from the file it ships, without importing it.

`import sklearn` takes 1.7 s on a 2-core CPU, a tenth of the quickstart; the
digits are one gzipped CSV inside the package (1,797 rows of 64 pixel values 0..16
and the label), which `sklearn.datasets.load_digits` reads with `np.loadtxt` as
done here. When the file is not where this looks (another scikit-learn layout),
scikit-learn's own loader is used.
"""

import functools
import importlib.util
import pathlib

import numpy as np

__all__ = ["load_digits"]


@functools.cache
def _csv_path() -> pathlib.Path | None:
  spec = importlib.util.find_spec("sklearn")  # finds the package, does not run it
  if spec is None or not spec.submodule_search_locations:
    return None
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / (
      "digits.csv.gz")
  return path if path.is_file() else None


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images (1797, 8, 8) float64 of 0..16, labels (1797,) int64), as
  `sklearn.datasets.load_digits()`'s images and target."""
  path = _csv_path()
  if path is None:
    from sklearn import datasets  # pylint: disable=g-import-not-at-top

    digits = datasets.load_digits()
    return digits.images, digits.target
  data = np.loadtxt(path, delimiter=",")
  return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
