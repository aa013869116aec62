"""UCF101: 101 actions, one middle frame per video; raw fallback reads ucfTrainTestlist/."""

import os
import re

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum


@DATASET_REGISTRY.register()
class UCF101(DatasetBase):
    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    download_name = "ucf101"

    def read_raw(self):
        cname2lab = {}
        with open(
            self.require(os.path.join(self.dataset_dir, "ucfTrainTestlist", "classInd.txt"))
        ) as f:
            for line in f:
                if line.strip():
                    label, action = line.split()
                    cname2lab[action] = int(label) - 1
        trainval = self._read_list(cname2lab, "trainlist01.txt")
        train, val = self.split_trainval(trainval)
        return train, val, self._read_list(cname2lab, "testlist01.txt")

    def _read_list(self, cname2lab: dict[str, int], name: str) -> list[Datum]:
        items = []
        with open(self.require(os.path.join(self.dataset_dir, "ucfTrainTestlist", name))) as f:
            for line in f:
                if not line.strip():
                    continue
                action, filename = line.split()[0].split("/")  # "ApplyEyeMakeup/v_x.avi [label]"
                cname = "_".join(re.findall("[A-Z][^A-Z]*", action))  # "Apply_Eye_Makeup"
                impath = os.path.join(self.image_dir, cname, filename.replace(".avi", ".jpg"))
                items.append(Datum(impath, cname2lab[action], 0, cname))
        return items
