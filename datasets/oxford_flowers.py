"""Oxford Flowers-102; raw fallback reads imagelabels.mat and cat_to_name.json (50/20/30)."""

import json
import os
from collections import defaultdict

from dassl_ext.data import DATASET_REGISTRY, DatasetBase
from dassl_ext.data.splits import split_by_class


@DATASET_REGISTRY.register()
class OxfordFlowers(DatasetBase):
    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    download_name = "oxford_flowers"

    def read_raw(self):
        from scipy.io import loadmat  # scipy comes with scikit-learn

        labels = loadmat(self.require(os.path.join(self.dataset_dir, "imagelabels.mat")))
        with open(self.require(os.path.join(self.dataset_dir, "cat_to_name.json"))) as f:
            cat_to_name = json.load(f)
        by_label = defaultdict(list)  # 1-based label -> paths, in image order
        for i, label in enumerate(labels["labels"][0]):
            by_label[int(label)].append(os.path.join(self.image_dir, f"image_{i + 1:05d}.jpg"))
        groups = [(y - 1, cat_to_name[str(y)], paths) for y, paths in by_label.items()]
        return split_by_class(groups)
