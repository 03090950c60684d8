"""Frozen-backbone features, computed once per image and kept on disk (:mod:`graft.features.store`)."""

from graft.features.store import (
    ENGINES,
    FeatureStore,
    body_engine,
    cached_features,
    extract_features,
    file_identity,
    planned_engine,
    store_key,
)

__all__ = [
    "ENGINES",
    "FeatureStore",
    "body_engine",
    "cached_features",
    "extract_features",
    "file_identity",
    "planned_engine",
    "store_key",
]
