"""Datasets, split files, few-shot caches, transforms and data loaders."""

import dassl_ext.data.config_rules  # noqa: F401  (registers the rules of the data keys)
from dassl_ext.data.base_dataset import DatasetBase, EvalSplit
from dassl_ext.data.data_manager import (
    DataManager,
    DatasetWrapper,
    TrainBatch,
    build_dataset,
    read_image,
)
from dassl_ext.data.splits import Datum
from dassl_ext.data.transforms import build_transform
from dassl_ext.registry import DATASET_REGISTRY

__all__ = [
    "DATASET_REGISTRY", "DataManager", "DatasetBase", "DatasetWrapper", "Datum", "EvalSplit",
    "TrainBatch", "build_dataset", "build_transform", "read_image",
]  # fmt: skip
