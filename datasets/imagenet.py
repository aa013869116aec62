"""ImageNet-1k: images/{train,val}/<wnid>/; names from classnames.txt (no split file)."""

import os

from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum
from dassl_ext.data.splits import listdir_sorted, read_lines, unique_keys
from dassl_ext.errors import UserError


def read_classnames(path: str) -> dict[str, str]:
    """`classnames.txt` lines "n01440764 tench" -> {wnid: name}, in file order (spaces or a
    tab after the wnid; a wnid listed twice, or a line without a name, is a UserError)."""
    rows = read_lines(path, _classname_row, "'<wnid> <class name>', e.g. 'n01440764 tench'")
    unique_keys(path, [wnid for wnid, _ in rows], "the wnid")
    return dict(rows)


def _classname_row(line: str) -> tuple[str, str]:
    wnid, name = line.split(maxsplit=1)
    return wnid, name.strip()


def read_class_folders(
    image_dir: str, folders: list[str], classnames: dict[str, str]
) -> list[Datum]:
    """Images of `image_dir/<folder>/`; label = position of the folder in `folders`."""
    items = []
    for label, folder in enumerate(folders):
        class_dir = os.path.join(image_dir, folder)
        imnames = listdir_sorted(class_dir) if os.path.isdir(class_dir) else []
        if not imnames:
            raise UserError(f"Class folder {class_dir} is missing or empty; add its images.")
        if folder not in classnames:
            raise UserError(
                f"Folder {class_dir} is not listed in classnames.txt; use ImageNet's own file."
            )
        cname = classnames[folder]
        items.extend(Datum(os.path.join(class_dir, n), label, 0, cname) for n in imnames)
    return items


class ImageNetFolders(DatasetBase):
    """ImageNet-style test sets: class folders named by wnid, labels in sorted folder order.

    Test-only: train_x = test = all images and there is no val split.
    """

    ignored: tuple[str, ...] = ()
    has_val_split = False

    def read_raw(self):
        classnames = read_classnames(self.require(os.path.join(self.dataset_dir, "classnames.txt")))
        folders = [f for f in listdir_sorted(self.require(self.image_dir)) if f not in self.ignored]
        data = read_class_folders(self.image_dir, folders, classnames)
        return data, [], data


@DATASET_REGISTRY.register()
class ImageNet(DatasetBase):
    dataset_dir = "imagenet"
    image_dir = "images"
    has_val_split = False  # its val images are the test split

    def read_raw(self):
        classnames = read_classnames(self.require(os.path.join(self.dataset_dir, "classnames.txt")))
        splits = []
        for split in ("train", "val"):  # ImageNet's val set is the test split
            split_dir = self.require(os.path.join(self.image_dir, split))
            splits.append(read_class_folders(split_dir, listdir_sorted(split_dir), classnames))
        return splits[0], [], splits[1]
