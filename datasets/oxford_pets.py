"""Oxford-IIIT Pets: 37 breeds; raw fallback reads annotations/{trainval,test}.txt."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum
from dassl_ext.data.splits import read_lines


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
        return read_lines(
            path, self._parse, "'<image name> <class id from 1> <species> <breed id>'"
        )

    def _parse(self, line: str) -> Datum:
        imname, label = line.split()[:2]
        if int(label) < 1:
            raise ValueError(label)  # class ids count from 1
        breed = imname.rsplit("_", 1)[0].lower()
        return Datum(os.path.join(self.image_dir, imname + ".jpg"), int(label) - 1, 0, breed)
