"""EuroSAT: 10 land-use classes of Sentinel-2 tiles; names spelled out for the text encoder."""

from dassl_ext.data import DATASET_REGISTRY, DatasetBase


@DATASET_REGISTRY.register()
class EuroSAT(DatasetBase):
    dataset_dir = "eurosat"
    image_dir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    download_name = "eurosat"
    classname_fixes = {
        "AnnualCrop": "Annual Crop Land",
        "Forest": "Forest",
        "HerbaceousVegetation": "Herbaceous Vegetation Land",
        "Highway": "Highway or Road",
        "Industrial": "Industrial Buildings",
        "Pasture": "Pasture Land",
        "PermanentCrop": "Permanent Crop Land",
        "Residential": "Residential Buildings",
        "River": "River",
        "SeaLake": "Sea or Lake",
    }

    def read_raw(self):
        return self.read_and_split_data(self.require(self.image_dir))
