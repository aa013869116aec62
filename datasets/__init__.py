"""Dataset readers; importing this package registers every one of them."""

from . import (
    caltech101,
    digits,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    ucf101,
)

__all__ = [
    "caltech101",
    "digits",
    "dtd",
    "eurosat",
    "fgvc_aircraft",
    "food101",
    "imagenet",
    "imagenet_a",
    "imagenet_r",
    "imagenet_sketch",
    "imagenetv2",
    "oxford_flowers",
    "oxford_pets",
    "stanford_cars",
    "sun397",
    "ucf101",
]
