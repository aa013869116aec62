"""Datasets, split files, few-shot caches, transforms and data loaders."""

from dassl_ext.data.base_dataset import DatasetBase, EvalSplit
from dassl_ext.data.data_manager import DataManager, DatasetWrapper, build_dataset, read_image
from dassl_ext.data.splits import Datum
from dassl_ext.data.transforms import build_transform
from dassl_ext.registry import DATASET_REGISTRY

__all__ = [
    "DATASET_REGISTRY",
    "DataManager",
    "DatasetBase",
    "DatasetWrapper",
    "Datum",
    "EvalSplit",
    "build_dataset",
    "build_transform",
    "read_image",
]
