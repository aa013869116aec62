"""ImageNet-Sketch: 1000 ImageNet classes drawn as sketches (test only)."""

from dassl_ext.data import DATASET_REGISTRY

from .imagenet import ImageNetFolders


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetFolders):
    dataset_dir = "imagenet-sketch"
    image_dir = "images"
    download_name = "imagenet_sketch"
