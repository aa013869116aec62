"""Oxford Flowers-102; raw fallback reads imagelabels.mat and cat_to_name.json (50/20/30)."""

import os
from collections import defaultdict

from dassl_ext.data import DATASET_REGISTRY, DatasetBase
from dassl_ext.data.splits import read_json, read_mat, split_by_class
from dassl_ext.errors import UserError


@DATASET_REGISTRY.register()
class OxfordFlowers(DatasetBase):
    dataset_dir = "oxford_flowers"
    image_dir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    download_name = "oxford_flowers"

    def read_raw(self):
        labels = read_mat(self.require(os.path.join(self.dataset_dir, "imagelabels.mat")), "labels")
        names_path = self.require(os.path.join(self.dataset_dir, "cat_to_name.json"))
        cat_to_name = self._read_names(names_path)
        by_label = defaultdict(list)  # 1-based label -> paths, in image order
        try:
            for i, label in enumerate(labels[0]):
                by_label[int(label)].append(os.path.join(self.image_dir, f"image_{i + 1:05d}.jpg"))
        except (ValueError, IndexError, TypeError) as e:
            raise UserError(
                f"{self.name}: {os.path.join(self.dataset_dir, 'imagelabels.mat')} does not hold "
                f"one label per image ({type(e).__name__}: {e}); download it again."
            ) from None
        missing = sorted(y for y in by_label if str(y) not in cat_to_name)
        if missing:
            raise UserError(
                f"{self.name}: imagelabels.mat uses label {missing[0]}, which {names_path} does "
                "not name; use the dataset's own cat_to_name.json."
            )
        groups = [(y - 1, cat_to_name[str(y)], paths) for y, paths in by_label.items()]
        return split_by_class(groups)

    def _read_names(self, path: str) -> dict[str, str]:
        """cat_to_name.json: {"1": "pink primrose", ...}."""
        try:
            names = read_json(path)
        except UserError:
            names = None
        if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
            raise UserError(
                f"{self.name}: {path} is not a JSON object of class names "
                '({"1": "pink primrose", ...}); use the dataset\'s own cat_to_name.json.'
            )
        return names
