"""ImageNet-R: renditions (art, cartoons, ...) of a 200-class ImageNet subset (test only)."""

from dassl_ext.data import DATASET_REGISTRY

from .imagenet import ImageNetFolders


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetFolders):
    dataset_dir = "imagenet-rendition"
    image_dir = "imagenet-r"
    download_name = "imagenet_r"
    ignored = ("README.txt",)
