"""Which image files, with which labels, make up each split of an image folder.

Layouts, tried in this order:

- ``root/train/<class>/...`` and ``root/val/<class>/...`` (or ``root/test``): ImageNet style, the
  class list comes from ``train``;
- ``root/<class>/...``: every class folder is split by a hashed holdout, so the split of a file
  depends only on its path (adding files never moves another file between splits);
- ``root/...`` with images but no class folders: unlabelled (label -1, no classes); in the split
  layout, ``train`` and ``val`` may be unlabelled the same way.

Image files are recognised by extension; hidden files and folders are skipped. A class folder is a
sub-folder holding at least one image file at any depth. With class folders present, images lying
directly in the same folder are ignored.

Each split lists its files in the order of another hash of their paths, not class by class: the
evaluations read a split's first images (probe, k-NN, reference statistics, reconstructions), and
those are then a sample of every class rather than the first classes alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import attrs

from bifamily.errors import DataError
from bifamily.image_decoding import IMAGE_EXTENSIONS

UNLABELLED = -1


@attrs.frozen
class FileList:
    """The files of one split, their labels (UNLABELLED without classes) and the class names."""

    paths: list[Path]
    labels: list[int]
    class_names: list[str]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_directly_in(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if _is_image(e.name) and e.is_file())


def _images_under(folder: Path) -> list[Path]:
    """Image files at any depth under ``folder`` (following links), in a stable order."""
    found = []
    for parent, folders, files in os.walk(folder, followlinks=True):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found.extend(Path(parent, name) for name in files if _is_image(name))
    return sorted(found)


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, for each visible sub-folder that holds images."""
    with os.scandir(folder) as entries:
        subfolders = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    classes = {name: _images_under(folder / name) for name in subfolders}
    return {name: files for name, files in classes.items() if files}


def _no_images(folder: Path) -> DataError:
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    return DataError(f"$.data.root: no image files ({extensions}) in {folder}")


def _labelled(folder: Path, class_names: list[str] | None = None) -> FileList:
    """The images of ``folder`` labelled by class folder; ``class_names`` fixes the label of each name."""
    classes = _class_folders(folder)
    if not classes:
        paths = _images_directly_in(folder)
        if not paths:
            raise _no_images(folder)
        if class_names:
            raise DataError(
                f"$.data.root: {folder} has no class folders, but the training split has "
                f"{len(class_names)} classes"
            )
        return FileList(paths, [UNLABELLED] * len(paths), [])
    names = list(classes) if class_names is None else class_names
    unknown = sorted(set(classes) - set(names))
    if unknown:
        raise DataError(f"$.data.root: {folder / unknown[0]}: class folder not among the training classes")
    paths, labels = [], []
    for label, name in enumerate(names):
        files = classes.get(name, [])
        paths.extend(files)
        labels.extend([label] * len(files))
    return FileList(paths, labels, names)


def _held_out(path: Path, root: Path, fraction: float) -> bool:
    """Whether ``path`` belongs to the held-out split: a hash of its path inside ``root``."""
    digest = hashlib.blake2b(path.relative_to(root).as_posix().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def _holdout_split(root: Path, split: str, fraction: float) -> FileList:
    everything = _labelled(root)
    keep = [_held_out(path, root, fraction) == (split == "test") for path in everything.paths]
    paths = [path for path, kept in zip(everything.paths, keep) if kept]
    if not paths:
        raise DataError(
            f"$.data.holdout_fraction: {fraction} of the {len(everything.paths)} images in {root} "
            f"leaves the {split} split empty"
        )
    labels = [label for label, kept in zip(everything.labels, keep) if kept]
    return FileList(paths, labels, everything.class_names)


def list_split(root: Path, split: str, holdout_fraction: float) -> FileList:
    """The files of ``split`` ("train" or "test") under ``root``, by the layouts described above, in
    hashed order."""
    return _hash_ordered(_listed(root, split, holdout_fraction), root)


def _hash_ordered(files: FileList, root: Path) -> FileList:
    """``files`` sorted by a hash of each path inside ``root`` (independent of the holdout's hash)."""

    def key(index: int) -> bytes:
        relative = files.paths[index].relative_to(root).as_posix().encode()
        return hashlib.blake2b(relative, digest_size=8, person=b"order").digest()

    order = sorted(range(len(files.paths)), key=key)
    return FileList([files.paths[i] for i in order], [files.labels[i] for i in order], files.class_names)


def _listed(root: Path, split: str, holdout_fraction: float) -> FileList:
    train_folder = root / "train"
    if not train_folder.is_dir():
        return _holdout_split(root, split, holdout_fraction)
    train = _labelled(train_folder)
    if split == "train":
        return train
    test_folder = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if test_folder is None:
        raise DataError(
            f"$.data.root: {train_folder} exists but {root / 'val'} does not (needed for the test split)"
        )
    return _labelled(test_folder, train.class_names)
