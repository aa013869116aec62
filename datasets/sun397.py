"""SUN397: 397 scene classes; raw fallback reads ClassName.txt and the first partition."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum
from dassl_ext.data.splits import read_lines, unique_keys


@DATASET_REGISTRY.register()
class SUN397(DatasetBase):
    dataset_dir = "sun397"
    image_dir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    download_name = "sun397"

    def read_raw(self):
        path = self.require(os.path.join(self.dataset_dir, "ClassName.txt"))
        classes = read_lines(path, _drop_slash, "'/<letter>/<class>[/<subclass>]'")
        cname2lab = unique_keys(path, classes, "the class")
        trainval = self._read_list(cname2lab, "Training_01.txt", path)
        train, val = self.split_trainval(trainval)
        return train, val, self._read_list(cname2lab, "Testing_01.txt", path)

    def _read_list(self, cname2lab: dict[str, int], name: str, class_file: str) -> list[Datum]:
        def parse(line: str) -> Datum:
            imname = _drop_slash(line)  # "/a/abbey/sun_x.jpg" -> "a/abbey/sun_x.jpg"
            folder = os.path.dirname(imname)
            # "a/apartment_building/outdoor" -> "outdoor apartment_building"
            cname = " ".join(folder.split("/")[1:][::-1])
            return Datum(os.path.join(self.image_dir, imname), cname2lab[folder], 0, cname)

        path = self.require(os.path.join(self.dataset_dir, name))
        return read_lines(path, parse, "'/<letter>/<class>/<image>.jpg'", class_file)


def _drop_slash(line: str) -> str:
    """ "/a/abbey" -> "a/abbey"; a line without the leading "/" is not SUN397's format."""
    if not line.startswith("/") or len(line) < 2:
        raise ValueError(line)
    return line[1:]
