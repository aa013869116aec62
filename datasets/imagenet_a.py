"""ImageNet-A: natural adversarial images of a 200-class ImageNet subset (test only)."""

from dassl_ext.data import DATASET_REGISTRY

from .imagenet import ImageNetFolders


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetFolders):
    dataset_dir = "imagenet-adversarial"
    image_dir = "imagenet-a"
    download_name = "imagenet_a"
    ignored = ("README.txt",)
