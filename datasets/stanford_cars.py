"""Stanford Cars: 196 models; split-file paths are relative to the dataset folder."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum


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
        from scipy.io import loadmat  # scipy comes with scikit-learn

        annos = loadmat(self.require(anno_file))["annotations"][0]
        names = loadmat(self.require(meta_file))["class_names"][0]
        items = []
        for anno in annos:
            label = int(anno["class"][0, 0]) - 1
            *model, year = str(names[label][0]).split(" ")
            cname = " ".join([year, *model])  # "Tesla Model S 2012" -> "2012 Tesla Model S"
            impath = os.path.join(self.dataset_dir, image_dir, str(anno["fname"][0]))
            items.append(Datum(impath, label, 0, cname))
        return items
