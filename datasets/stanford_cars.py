"""Stanford Cars: 196 models; split-file paths are relative to the dataset folder."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum
from dassl_ext.data.splits import read_mat
from dassl_ext.errors import UserError


@DATASET_REGISTRY.register()
class StanfordCars(DatasetBase):
    dataset_dir = "stanford_cars"
    image_dir = ""  # images live in cars_train/ and cars_test/
    split_file = "split_zhou_StanfordCars.json"
    download_name = "stanford_cars"

    def read_raw(self):
        meta = os.path.join(self.dataset_dir, "devkit", "cars_meta.mat")
        train_annos = os.path.join(self.dataset_dir, "devkit", "cars_train_annos.mat")
        test_annos = os.path.join(self.dataset_dir, "cars_test_annos_withlabels.mat")
        trainval = self._read_annotations("cars_train", train_annos, meta)
        train, val = self.split_trainval(trainval)
        return train, val, self._read_annotations("cars_test", test_annos, meta)

    def _read_annotations(self, image_dir: str, anno_file: str, meta_file: str) -> list[Datum]:
        annos = read_mat(self.require(anno_file), "annotations")
        names = read_mat(self.require(meta_file), "class_names")
        items = []
        try:
            names = [str(name[0]) for name in names[0]]
            for anno in annos[0]:
                label = int(anno["class"][0, 0]) - 1
                fname = str(anno["fname"][0])
                if not 0 <= label < len(names):
                    raise IndexError(label)
                *model, year = names[label].split(" ")
                cname = " ".join([year, *model])  # "Tesla Model S 2012" -> "2012 Tesla Model S"
                items.append(
                    Datum(os.path.join(self.dataset_dir, image_dir, fname), label, 0, cname)
                )
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise UserError(
                f"{self.name}: {anno_file} (with {meta_file}) is not in the layout of the Stanford "
                f"Cars devkit ({type(e).__name__}: {e}; annotation {len(items) + 1}); download "
                "the dataset's own files again."
            ) from None
        return items
