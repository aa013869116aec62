"""ImageNetV2 (matched frequency): folder k holds images of ImageNet label k (test only)."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase

from .imagenet import read_class_folders, read_classnames


@DATASET_REGISTRY.register()
class ImageNetV2(DatasetBase):
    dataset_dir = "imagenetv2"
    image_dir = "imagenetv2-matched-frequency-format-val"
    download_name = "imagenetv2"
    has_val_split = False

    def read_raw(self):
        classnames = read_classnames(self.require(os.path.join(self.dataset_dir, "classnames.txt")))
        # Folder k holds ImageNet class k, i.e. the k-th line of classnames.txt.
        by_folder = {str(k): name for k, name in enumerate(classnames.values())}
        data = read_class_folders(self.require(self.image_dir), list(by_folder), by_folder)
        return data, [], data
