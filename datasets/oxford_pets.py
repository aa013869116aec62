"""Oxford-IIIT Pets: 37 breeds; raw fallback reads annotations/{trainval,test}.txt."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum


@DATASET_REGISTRY.register()
class OxfordPets(DatasetBase):
    dataset_dir = "oxford_pets"
    image_dir = "images"
    split_file = "split_zhou_OxfordPets.json"
    download_name = "oxford_pets"

    def read_raw(self):
        trainval = self._read_annotations("trainval.txt")
        train, val = self.split_trainval(trainval)
        return train, val, self._read_annotations("test.txt")

    def _read_annotations(self, name: str) -> list[Datum]:
        # Lines: "<image name> <class id> <species> <breed id>"; the breed is the file name
        # without its trailing "_<number>".
        path = self.require(os.path.join(self.dataset_dir, "annotations", name))
        items = []
        with open(path) as f:
            for line in f:
                if not line.strip() or line.startswith("#"):
                    continue
                imname, label = line.split()[:2]
                breed = imname.rsplit("_", 1)[0].lower()
                impath = os.path.join(self.image_dir, imname + ".jpg")
                items.append(Datum(impath, int(label) - 1, 0, breed))
        return items
