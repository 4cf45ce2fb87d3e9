"""bifamily built-in plugin: the data sets.

- ``procedural``: coloured shapes generated on the fly from a seed (offline, nothing on disk);
- ``mnist``: MNIST from local idx files;
- ``image_folder``: your own images, with ResNet-style or compare_gan "distorted" augmentation;
- ``torchvision``: MNIST, Fashion-MNIST, CIFAR-10, SVHN, STL-10 and CelebA through torchvision's
  classes, from a local folder (downloaded only with ``download = true``).

Each ``build(ctx, split)`` returns a map-style data set of (image, label) pairs with ``num_classes``
and ``class_names``; images are float32 (channels, R, R) in [-1, 1] with R = ``ctx.data_resolution``.
All of them implement ``__getitems__``, which torch's DataLoader uses to fetch a batch in one call.
Only ``image_folder`` has epoch-dependent randomness: its ``set_epoch(epoch)`` must be called at
the start of every epoch.
"""

from __future__ import annotations

from bifamily.hookspecs import Register, hookimpl

from .image_folder import ImageFolderConfig, ImageFolderDataset
from .mnist import IdxImages, MnistConfig
from .procedural import ProceduralConfig, ProceduralShapes
from .torchvision_sets import TorchvisionConfig

__all__ = [
    "IdxImages",
    "ImageFolderConfig",
    "ImageFolderDataset",
    "MnistConfig",
    "ProceduralConfig",
    "ProceduralShapes",
    "TorchvisionConfig",
]


@hookimpl
def bifamily_register_datasets(register: Register) -> None:
    register("procedural", ProceduralConfig)
    register("mnist", MnistConfig)
    register("image_folder", ImageFolderConfig)
    register("torchvision", TorchvisionConfig)
