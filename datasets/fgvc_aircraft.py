"""FGVC-Aircraft 2013b: 100 variants; always read from the annotation lists (no split file)."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum
from dassl_ext.data.splits import read_lines, unique_keys


@DATASET_REGISTRY.register()
class FGVCAircraft(DatasetBase):
    dataset_dir = "fgvc_aircraft"
    image_dir = "images"
    download_name = "fgvc_aircraft"

    def read_raw(self):
        path = self.require(os.path.join(self.dataset_dir, "variants.txt"))
        cname2lab = unique_keys(path, read_lines(path, str, "a variant name"), "the variant")
        return tuple(self._read_list(cname2lab, s, path) for s in ("train", "val", "test"))

    def _read_list(self, cname2lab: dict[str, int], split: str, class_file: str) -> list[Datum]:
        def parse(line: str) -> Datum:
            imid, cname = line.split(" ", 1)  # "<image id> <variant words>"
            impath = os.path.join(self.image_dir, imid + ".jpg")
            return Datum(impath, cname2lab[cname], 0, cname)

        path = self.require(os.path.join(self.dataset_dir, f"images_variant_{split}.txt"))
        return read_lines(path, parse, "'<image id> <variant>' (one space)", class_file)
