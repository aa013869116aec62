"""UCF101: 101 actions, one middle frame per video; raw fallback reads ucfTrainTestlist/."""

import os
import re

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum
from dassl_ext.data.splits import read_lines, unique_keys


@DATASET_REGISTRY.register()
class UCF101(DatasetBase):
    dataset_dir = "ucf101"
    image_dir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    download_name = "ucf101"

    def read_raw(self):
        path = self.require(os.path.join(self.dataset_dir, "ucfTrainTestlist", "classInd.txt"))
        rows = read_lines(path, _class_row, "'<class id from 1> <action>'")
        unique_keys(path, [action for _, action in rows], "the action")
        cname2lab = {action: label for label, action in rows}
        trainval = self._read_list(cname2lab, "trainlist01.txt", path)
        train, val = self.split_trainval(trainval)
        return train, val, self._read_list(cname2lab, "testlist01.txt", path)

    def _read_list(self, cname2lab: dict[str, int], name: str, class_file: str) -> list[Datum]:
        def parse(line: str) -> Datum:
            action, filename = line.split()[0].split("/")  # "ApplyEyeMakeup/v_x.avi [label]"
            cname = "_".join(re.findall("[A-Z][^A-Z]*", action))  # "Apply_Eye_Makeup"
            impath = os.path.join(self.image_dir, cname, filename.replace(".avi", ".jpg"))
            return Datum(impath, cname2lab[action], 0, cname)

        path = self.require(os.path.join(self.dataset_dir, "ucfTrainTestlist", name))
        return read_lines(path, parse, "'<Action>/<video>.avi [class id]'", class_file)


def _class_row(line: str) -> tuple[int, str]:
    label, action = line.split()
    if int(label) < 1:
        raise ValueError(label)
    return int(label) - 1, action
