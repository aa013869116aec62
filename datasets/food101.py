"""Food-101: 101 dishes, one folder each."""

from dassl_ext.data import DATASET_REGISTRY, DatasetBase


@DATASET_REGISTRY.register()
class Food101(DatasetBase):
    dataset_dir = "food-101"
    image_dir = "images"
    split_file = "split_zhou_Food101.json"
    download_name = "food101"

    def read_raw(self):
        return self.read_and_split_data(self.require(self.image_dir))
