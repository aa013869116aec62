"""ImageNetV2 (matched frequency): folder k holds images of ImageNet label k (test only)."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase
from dassl_ext.data.splits import listdir_sorted
from dassl_ext.errors import UserError

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
        image_dir = self.require(self.image_dir)
        unknown = [f for f in listdir_sorted(image_dir) if f not in by_folder]
        if unknown:  # else those images would silently be left out
            raise UserError(
                f"{self.name}: folder {os.path.join(image_dir, unknown[0])} is not a class: "
                f"folders are named 0..{len(by_folder) - 1}, one per line of the "
                f"{len(by_folder)} in {os.path.join(self.dataset_dir, 'classnames.txt')}; use "
                "ImageNet's classnames.txt (1,000 lines) and ImageNetV2's own folders."
            )
        data = read_class_folders(image_dir, list(by_folder), by_folder)
        return data, [], data
