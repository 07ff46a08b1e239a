"""Random-access image sources: TFDS datasets and image folders, without TensorFlow.

`open_source(name_or_path, split, data_dir=...)` returns an `ImageSource`: `len`,
`source[i] -> (uint8 (H, W, 3) image, int label)` and `labels`, the (N,) label
array (needed to choose the poisoned examples without decoding every image).

- A TFDS name (`cifar10`, `cifar100`, `imagenet2012`, `imagenette`) reads the
  prepared ArrayRecord files through `tfds.data_source` with image decoding skipped,
  and decodes JPEG/PNG bytes with Pillow: no TensorFlow at training time. Preparing
  the dataset once needs TensorFlow (see `prepare_hint`).
- A directory laid out as `DIR/SPLIT/CLASS/FILE` is an image folder; classes are
  the sorted folder names.
- `sklearn_digits` is scikit-learn's 8x8 digits as RGB images, offline (the stand-in
  for MNIST, which cannot be downloaded everywhere).

`ClassSubset` keeps some classes of a source and relabels them 0..k-1 (binary tasks).

Sources of ImageNet-sized images resize to `image_size` x `image_size` on read, as
the reference does before poisoning (spec 10.2).
"""

import dataclasses
import io
import os
import pathlib
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from vibe_jax.data.digits_file import load_digits
from vibe_jax.errors import InputError, MissingFileError

__all__ = ["DatasetInfo", "DATASETS", "ImageSource", "ArraySource", "SubsetSource",
           "ClassSubset", "ImageFolderSource", "TfdsSource", "open_source", "dataset_info",
           "parse_classes", "sklearn_digits_source", "stratified_subset"]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the pipeline needs to know about a dataset.

  Attributes:
    tfds_name: the TFDS name (with config), or "" for an image folder or a built-in
      in-memory dataset (`sklearn_digits`).
    train_split / test_split: split names.
    image_size: side of the (square) images the attacks and models see.
    mean / std: per-channel normalisation (spec 10.2).
    small: CIFAR-style (pad-and-crop augmentation) rather than ImageNet-style.
  """

  tfds_name: str
  train_split: str
  test_split: str
  image_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  small: bool


_CIFAR10_NORM = ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
_CIFAR100_NORM = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
_IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The grey sklearn digits' own statistics (all 1,797 images, every pixel), not
# CIFAR's: the digits are mostly black background, far from CIFAR's mean.
_DIGITS_NORM = ((0.3053, 0.3053, 0.3053), (0.3759, 0.3759, 0.3759))

DATASETS = {
    "cifar10": DatasetInfo("cifar10", "train", "test", 32, *_CIFAR10_NORM, True),
    "cifar100": DatasetInfo("cifar100", "train", "test", 32, *_CIFAR100_NORM, True),
    "imagenet2012": DatasetInfo("imagenet2012", "train", "validation", 224,
                                *_IMAGENET_NORM, False),
    "imagenette": DatasetInfo("imagenette/full-size-v2", "train", "validation", 224,
                              *_IMAGENET_NORM, False),
    # Small images: CIFAR-style augmentation, as the reference treats MNIST.
    "sklearn_digits": DatasetInfo("", "train", "test", 8, *_DIGITS_NORM, True),
}


class UndecodableImageError(InputError):
  """An image file that does not decode; the message names it."""


def decodable(source: "ImageSource") -> np.ndarray:
  """Indices of the examples of `source` that decode (reads every image once)."""
  good = []
  for i in range(len(source)):
    try:
      source[i]
    except UndecodableImageError:
      continue
    good.append(i)
  return np.asarray(good, np.int64)


class ImageSource:
  """Random access to (image, label) pairs; see the module docstring."""

  labels: np.ndarray
  num_classes: int
  image_size: int

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    raise NotImplementedError

  def images(self, indices: Sequence[int]) -> np.ndarray:
    """The decoded images at `indices`, stacked (B, H, W, 3) uint8."""
    return np.stack([self[int(i)][0] for i in indices])


class ArraySource(ImageSource):
  """Images already in memory: uint8 (N, H, W, 3) and (N,) labels."""

  def __init__(self, images: np.ndarray, labels: np.ndarray,
               num_classes: Optional[int] = None):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
      raise InputError(f"images must be uint8 (N, H, W, 3), got {images.dtype} "
                       f"{images.shape}")
    if len(labels) != len(images):
      raise InputError(f"{len(images)} images but {len(labels)} labels")
    self._images = images
    self.labels = np.asarray(labels, np.int32)
    self.num_classes = num_classes or int(self.labels.max()) + 1
    self.image_size = images.shape[1]

  def __getitem__(self, index):
    return self._images[index], int(self.labels[index])

  def images(self, indices):
    return self._images[np.asarray(indices)]


class SubsetSource(ImageSource):
  """The examples `indices` of another source, renumbered 0..len-1."""

  def __init__(self, source: ImageSource, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices)
    self.labels = source.labels[self.indices]
    self.num_classes, self.image_size = source.num_classes, source.image_size

  def __getitem__(self, index):
    return self.source[int(self.indices[index])]


class ClassSubset(ImageSource):
  """The examples of some classes of another source, relabelled in the given order:
  `ClassSubset(source, (2, 0))` keeps classes 2 and 0 as labels 0 and 1.

  Raises:
    InputError: a class that is not in `source` (ids outside 0..num_classes-1).
  """

  def __init__(self, source: ImageSource, classes: Sequence[int]):
    self.classes = tuple(int(c) for c in classes)
    for c in self.classes:
      if not 0 <= c < source.num_classes:
        raise InputError(f"class {c} is not in the dataset, which has {source.num_classes} "
                         f"classes (0..{source.num_classes - 1})")
    # -1 marks the dropped classes; a lookup table relabels every kept one at once.
    table = np.full(source.num_classes, -1, np.int32)
    table[list(self.classes)] = np.arange(len(self.classes), dtype=np.int32)
    self.source, self._table = source, table
    self.indices = np.flatnonzero(table[source.labels] >= 0)
    self.labels = table[source.labels[self.indices]]
    self.num_classes, self.image_size = len(self.classes), source.image_size

  def __getitem__(self, index):
    image, label = self.source[int(self.indices[index])]
    return image, int(self._table[label])

  def images(self, indices):
    return self.source.images(self.indices[np.asarray(indices, np.int64)])


def parse_classes(text: str, key: str = "config.data.classes") -> tuple[int, ...]:
  """The class ids of a list like "2,0", in order; () for "" (every class).

  Args:
    text: comma-separated class ids.
    key: what the message calls the value.

  Raises:
    InputError: (one line) an entry that is not an integer, a repeated class, or
      fewer than two classes.
  """
  if not text.strip():
    return ()
  classes = []
  for entry in (e.strip() for e in text.split(",")):
    try:
      classes.append(int(entry))
    except ValueError:
      raise InputError(f"{key}={text!r}: {entry!r} is not an integer class id; use "
                       "comma-separated ids like '2,0'") from None
  classes = tuple(classes)
  repeated = sorted({c for c in classes if classes.count(c) > 1})
  if repeated:
    raise InputError(f"{key}={text!r}: duplicate class {repeated[0]}; list each class once")
  if len(classes) < 2:
    raise InputError(f"{key}={text!r}: needs at least 2 classes, got {len(classes)}")
  return classes


def sklearn_digits_source(split: str) -> ArraySource:
  """scikit-learn's 1,797 8x8 digits as uint8 (N, 8, 8, 3) grey RGB images.

  Grey value round(v * 255 / 16) of the 0..16 digit pixels, in every channel. The
  split is fixed, whatever the run seed (permutation from default_rng(0), the first
  30% = 539 images "test", the rest "train"; the split `badnets_digits(seed=0)`
  uses), so feature caches and runs with other seeds share it.
  """
  if split not in ("train", "test"):
    raise InputError(f"sklearn_digits has the splits 'train' and 'test', not {split!r}")
  pixels, target = load_digits()
  grey = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
  order = np.random.default_rng(0).permutation(len(grey))
  n_test = int(round(0.3 * len(grey)))
  chosen = np.sort(order[:n_test] if split == "test" else order[n_test:])
  images = np.repeat(grey[chosen][..., None], 3, axis=3)
  return ArraySource(images, target[chosen], num_classes=10)


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Sorted indices of about `size` examples, the same share of every class."""
  rng = np.random.default_rng((seed, 0x5B5E7))
  share = min(1.0, size / len(labels))
  picked = [rng.permutation(np.flatnonzero(labels == c))[:int(round(share * np.sum(labels == c)))]
            for c in np.unique(labels)]
  return np.sort(np.concatenate(picked))


def _to_rgb_array(value: Any, size: Optional[int]) -> np.ndarray:
  """uint8 (H, W, 3) from encoded bytes, a PIL image or an array; resized if asked."""
  if isinstance(value, (bytes, bytearray)):
    image = Image.open(io.BytesIO(value))
  elif isinstance(value, Image.Image):
    image = value
  else:
    array = np.asarray(value)
    if array.ndim == 2:
      array = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[-1] == 1:
      array = np.repeat(array, 3, axis=2)
    if size is None or array.shape[:2] == (size, size):
      return array.astype(np.uint8)
    image = Image.fromarray(array.astype(np.uint8))
  image = image.convert("RGB")
  if size is not None and image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  return np.asarray(image, np.uint8)


class ImageFolderSource(ImageSource):
  """Images under `root/split/CLASS/FILE`; labels follow the sorted class names."""

  def __init__(self, root: str | os.PathLike, split: str, image_size: Optional[int] = None):
    split_dir = pathlib.Path(root) / split
    if not split_dir.is_dir():
      raise MissingFileError(
          f"image folder split {str(split_dir)!r} does not exist; expected the layout "
          "ROOT/SPLIT/CLASS/FILE")
    self.classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not self.classes:
      raise InputError(f"{str(split_dir)!r} has no class folders")
    files, labels = [], []
    for label, name in enumerate(self.classes):
      found = sorted(p for p in (split_dir / name).iterdir()
                     if p.suffix.lower() in _IMAGE_SUFFIXES)
      if not found:
        # An empty class folder would silently add a class without examples.
        raise InputError(f"class folder {str(split_dir / name)!r} has no image files "
                         f"({', '.join(sorted(_IMAGE_SUFFIXES))}); remove it or add images")
      files += found
      labels += [label] * len(found)
    if not files:
      raise InputError(f"{str(split_dir)!r} has no image files")
    self.files = files
    self.labels = np.asarray(labels, np.int32)
    self.num_classes = len(self.classes)
    if image_size is None:
      with Image.open(files[0]) as first:
        image_size = first.size[0]
    self.image_size = image_size

  def __getitem__(self, index):
    try:
      with Image.open(self.files[index]) as image:
        return _to_rgb_array(image, self.image_size), int(self.labels[index])
    except (OSError, ValueError) as error:  # PIL's errors for unreadable images
      raise UndecodableImageError(
          f"image {str(self.files[index])!r} cannot be decoded ({error}); fix or remove "
          "it, or pass --config.data.skip_bad_images=True to skip such images") from error


def prepare_hint(name: str, data_dir: Optional[str]) -> str:
  """How to prepare TFDS dataset `name` for `tfds.data_source`."""
  where = f" --data_dir={data_dir}" if data_dir else ""
  manual = ""
  if name.startswith("imagenet2012"):
    manual = (" ImageNet needs a manual download first: put ILSVRC2012_img_train.tar "
              "and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/.")
  return (f"prepare it once (needs TensorFlow): pip install tensorflow-cpu && "
          f"tfds build {name}{where} --file_format=array_record.{manual}")


class TfdsSource(ImageSource):
  """A prepared TFDS dataset read through `tfds.data_source` (no TensorFlow)."""

  def __init__(self, name: str, split: str, data_dir: Optional[str] = None,
               image_size: Optional[int] = None):
    # Lazy: TFDS takes seconds to import; image folders and arrays never need it.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    try:
      self._source = tfds.data_source(
          name, split=split, data_dir=data_dir, download=False,
          decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as error:  # noqa: BLE001 -- TFDS raises many kinds here
      raise MissingFileError(
          f"TFDS dataset {name!r} split {split!r} is not available for random access "
          f"in data_dir {data_dir or '(default ~/tensorflow_datasets)'} "
          f"({type(error).__name__}: {str(error).splitlines()[0]}); "
          f"{prepare_hint(name, data_dir)}") from error
    self.image_size = image_size
    self.labels = np.asarray([int(self._source[i]["label"])
                              for i in range(len(self._source))], np.int32)
    self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
    if self.image_size is None and len(self.labels):
      self.image_size = self[0][0].shape[0]

  def __getitem__(self, index):
    record = self._source[index]
    return _to_rgb_array(record["image"], self.image_size), int(record["label"])


def dataset_info(name_or_path: str) -> DatasetInfo:
  """The `DatasetInfo` of a built-in name (`DATASETS`), or one inferred for an image
  folder.

  An image folder is CIFAR-like when its first image is at most 64 px wide, else
  ImageNet-like (resized to 224); its test split is `test` or, failing that, `val`.
  """
  if name_or_path in DATASETS:
    return DATASETS[name_or_path]
  root = pathlib.Path(name_or_path)
  if not root.is_dir():
    raise InputError(f"unknown dataset {name_or_path!r}: neither a built-in name "
                     f"({', '.join(DATASETS)}) nor an image-folder directory")
  test = next((s for s in ("test", "val", "validation") if (root / s).is_dir()), "test")
  first = next((p for p in sorted((root / "train").rglob("*"))
                if p.suffix.lower() in _IMAGE_SUFFIXES), None)
  if first is None:
    raise InputError(f"image folder {name_or_path!r} has no images under train/")
  with Image.open(first) as image:
    width = image.size[0]
  if width <= 64:
    return DatasetInfo("", "train", test, width, *_CIFAR10_NORM, True)
  return DatasetInfo("", "train", test, 224, *_IMAGENET_NORM, False)


def open_source(name_or_path: str, split: str, *, data_dir: Optional[str] = None
                ) -> ImageSource:
  """The `ImageSource` for a built-in name or an image-folder path (see module doc)."""
  info = dataset_info(name_or_path)
  if name_or_path == "sklearn_digits":
    return sklearn_digits_source(split)
  if info.tfds_name:
    return TfdsSource(info.tfds_name, split, data_dir, info.image_size)
  return ImageFolderSource(name_or_path, split, info.image_size)
