"""FGVC-Aircraft 2013b: 100 variants; always read from the annotation lists (no split file)."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum


@DATASET_REGISTRY.register()
class FGVCAircraft(DatasetBase):
    dataset_dir = "fgvc_aircraft"
    image_dir = "images"
    download_name = "fgvc_aircraft"

    def read_raw(self):
        with open(self.require(os.path.join(self.dataset_dir, "variants.txt"))) as f:
            cname2lab = {line.strip(): i for i, line in enumerate(f) if line.strip()}
        return tuple(self._read_list(cname2lab, s) for s in ("train", "val", "test"))

    def _read_list(self, cname2lab: dict[str, int], split: str) -> list[Datum]:
        items = []
        path = self.require(os.path.join(self.dataset_dir, f"images_variant_{split}.txt"))
        with open(path) as f:
            for line in f:
                if line.strip():
                    imid, cname = line.strip().split(" ", 1)  # "<image id> <variant words>"
                    impath = os.path.join(self.image_dir, imid + ".jpg")
                    items.append(Datum(impath, cname2lab[cname], 0, cname))
        return items
