"""DALI loaders over the shard format: `train_loader` / `eval_loader` (one factory, `make_loader`), the
`DaliLoader` they return, and ImageFolder trees. They import only the format (../format.py), never the build.
"""
from .dali import IMAGENET_MEAN, IMAGENET_STD, DaliLoader, padded_to_targets
from .factory import eval_loader, make_loader, train_loader
from .folder import FolderListing, image_folder, list_image_folder

__all__ = ["train_loader", "eval_loader", "make_loader", "DaliLoader", "image_folder", "list_image_folder",
           "FolderListing", "padded_to_targets", "IMAGENET_MEAN", "IMAGENET_STD"]
