"""Stages a defense is built from: self-supervised pretraining, frozen-backbone
feature extraction and outlier filtering. Each returns a typed result and never
edits the config."""

from vibe_jax.stages import ssl
from vibe_jax.stages.features import FeaturesResult, extract_features
from vibe_jax.stages.outliers import OutlierResult, filter_outliers

__all__ = ["ssl", "FeaturesResult", "extract_features", "OutlierResult", "filter_outliers"]
