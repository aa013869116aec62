"""SUN397: 397 scene classes; raw fallback reads ClassName.txt and the first partition."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum


@DATASET_REGISTRY.register()
class SUN397(DatasetBase):
    dataset_dir = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    download_name = "sun397"

    def read_raw(self):
        with open(self.require(os.path.join(self.dataset_dir, "ClassName.txt"))) as f:
            classes = [line.strip()[1:] for line in f if line.strip()]  # drop the leading "/"
        cname2lab = {c: i for i, c in enumerate(classes)}
        trainval = self._read_list(cname2lab, "Training_01.txt")
        train, val = self.split_trainval(trainval)
        return train, val, self._read_list(cname2lab, "Testing_01.txt")

    def _read_list(self, cname2lab: dict[str, int], name: str) -> list[Datum]:
        items = []
        with open(self.require(os.path.join(self.dataset_dir, name))) as f:
            for line in f:
                imname = line.strip()[1:]  # "/a/abbey/sun_x.jpg" -> "a/abbey/sun_x.jpg"
                if not imname:
                    continue
                folder = os.path.dirname(imname)
                # "a/apartment_building/outdoor" -> "outdoor apartment_building"
                cname = " ".join(folder.split("/")[1:][::-1])
                items.append(
                    Datum(os.path.join(self.image_dir, imname), cname2lab[folder], 0, cname)
                )
        return items
