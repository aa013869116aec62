"""Caltech-101: 100 object classes (background and Faces_easy dropped)."""

from dassl_ext.data import DATASET_REGISTRY, DatasetBase


@DATASET_REGISTRY.register()
class Caltech101(DatasetBase):
    dataset_dir = "caltech-101"
    image_dir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    download_name = "caltech101"
    classname_fixes = {
        "airplanes": "airplane",
        "Faces": "face",
        "Leopards": "leopard",
        "Motorbikes": "motorbike",
    }

    def read_raw(self):
        self.require(self.image_dir)
        return self.read_and_split_data(self.image_dir, ignored=("BACKGROUND_Google", "Faces_easy"))
