"""Describable Textures: 47 texture classes, one folder each."""

from dassl_ext.data import DATASET_REGISTRY, DatasetBase


@DATASET_REGISTRY.register()
class DescribableTextures(DatasetBase):
    dataset_dir = "dtd"
    image_dir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    download_name = "dtd"

    def read_raw(self):
        return self.read_and_split_data(self.require(self.image_dir))
