"""Datasets: feature matrices (npz, in memory) and the digits quickstart data."""

from vibe_jax.data.digits import badnets_digits
from vibe_jax.data.features import FeatureData, load_npz, save_npz

__all__ = ["FeatureData", "badnets_digits", "load_npz", "save_npz"]
