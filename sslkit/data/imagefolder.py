"""ImageFolder data: ``root/train/<class>/**/<image>`` and ``root/val/<class>/**/<image>``, or
a flat folder of unlabelled photos: the listing of the files and their classes.

Each file is one item of an :class:`~sslkit.data.encoded.EncodedImages` source: pretraining
cuts the random-resized crops of the whole decoded image in the loader workers
(:mod:`sslkit.data.crops`); evaluation (and ``data.crop_from: square``) decodes it to a fixed
``load_size`` square (the shorter side resized, the centre kept), whose centre
``image_size`` crop is the usual Resize(256) + CenterCrop(224). ``data.class_list`` selects
and orders the classes (e.g. ImageNet-100).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from sslkit.data.encoded import EncodedImages
from sslkit.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolderDataset(EncodedImages):
    """``root/<split>/<class>/**/<image>``: one file per image (:class:`EncodedImages`).

    ``samples`` are ``(path, label)`` pairs; the class indices follow ``classes``.
    """

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], load_size: int,
                 channels: int = 3, skip_corrupt: bool = False, split: str = ""):
        super().__init__("imagefolder", [lab for _, lab in samples], classes, load_size,
                         channels, skip_corrupt, split)
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int) -> bytes:
        with open(self.samples[i][0], "rb") as fh:
            return fh.read()

    def where(self, i: int) -> str:
        return self.samples[i][0]

    def subset(self, indices: torch.Tensor) -> "ImageFolderDataset":
        return ImageFolderDataset([self.samples[int(i)] for i in indices], self.classes,
                                  self.load_size, self.channels, self.skip_corrupt, self.split)


def _is_plain_name(entry: str) -> bool:
    return (entry not in ("", ".", "..") and "/" not in entry and "\\" not in entry
            and "\x00" not in entry and not os.path.isabs(entry) and ":" not in entry)


def _read_class_list(path: str, root: str) -> list[str]:
    candidates = [path] if os.path.isabs(path) else [path, os.path.join(root, path)]
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found is None:
        raise DataError(f"imagefolder: class list file not found; tried {', '.join(candidates)}; "
                        f"give a text file with one class folder name per line")
    try:
        with open(found, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"imagefolder: cannot read class list '{found}' ({e})") from None
    classes: list[str] = []
    for k, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if not _is_plain_name(entry):
            raise DataError(f"imagefolder: class list '{found}' line {k}: '{entry}' is not a "
                            f"plain class folder name inside {root} (no paths, '..' or "
                            f"absolute names)")
        if entry not in classes:
            classes.append(entry)
    if not classes:
        raise DataError(f"imagefolder: class list '{found}' names no classes")
    return classes


def _imagefolder_layout_hint(root: str) -> str:
    return (f"the layouts read are {root}/train/<class>/<image>.jpg (with "
            f"{root}/val/<class>/<image>.jpg for evaluation), or unlabelled photos in "
            f"{root}/train/ or in {root}/ itself (pretraining only)")


_UNLABELLED = ("imagefolder: {folder} holds images without class folders: they can pretrain, "
               "but kNN and the linear probe need labels; {hint}")


def _flat_images(folder: str) -> list[str]:
    """The image files directly in ``folder`` (sorted), for an unlabelled folder."""
    return sorted(os.path.join(folder, e.name) for e in os.scandir(folder)
                  if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))


def list_imagefolder(root: str, split: str,
                     class_list: Optional[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples [(path, label)], class names)`` of ``split``: ``root/train/<class>/`` for
    "pretrain" and "train", ``root/val/<class>/`` for "test"; class indices follow train/.

    Unlabelled images serve pretraining: "pretrain" of a folder without class folders (its
    images directly in ``root/train/`` or, without a train/ folder, in ``root/``) gives every
    image the label -1 and no classes. Evaluation needs class folders.
    """
    sub = "val" if split == "test" else "train"
    folder = os.path.join(root, sub)
    if split == "pretrain" and not os.path.isdir(folder) and os.path.isdir(root) \
            and _flat_images(root):
        folder = root  # a flat folder of photos
    if not os.path.isdir(folder):
        if not os.path.exists(root):
            raise DataError(f"imagefolder: data.root '{root}' does not exist; set data.root to "
                            f"your image folder ({_imagefolder_layout_hint(root)})")
        if not os.path.isdir(root):
            raise DataError(f"imagefolder: data.root '{root}' is a file, not a folder; set "
                            f"data.root to your image folder")
        if _flat_images(root):
            raise DataError(_UNLABELLED.format(folder=root, hint=_imagefolder_layout_hint(root)))
        if sub == "val":
            raise DataError(f"imagefolder: {root} has no val/ folder: kNN and the linear probe "
                            f"score the images of {root}/val/<class>/; add some there (the "
                            f"classes of train/)")
        raise DataError(f"imagefolder: {root} has neither a train/ folder nor images; "
                        f"{_imagefolder_layout_hint(root)}")
    train_dir = os.path.join(root, "train")
    class_dir = train_dir if os.path.isdir(train_dir) else folder  # indices follow train/
    if class_list:
        classes = _read_class_list(class_list, root)
        for c in classes:
            if not os.path.isdir(os.path.join(class_dir, c)):
                raise DataError(f"imagefolder: class '{c}' of the class list has no folder "
                                f"{os.path.join(class_dir, c)}; {_imagefolder_layout_hint(root)}")
    else:
        classes = sorted(e.name for e in os.scandir(class_dir) if e.is_dir())
    if not classes:
        flat = _flat_images(folder)
        if split == "pretrain" and flat:
            return [(path, -1) for path in flat], []
        if flat:
            raise DataError(_UNLABELLED.format(folder=folder, hint=_imagefolder_layout_hint(root)))
        raise DataError(f"imagefolder: no class folders in {class_dir}; {_imagefolder_layout_hint(root)}")
    samples: list[tuple[str, int]] = []
    for idx, c in enumerate(classes):
        cdir = os.path.join(folder, c)
        if not os.path.isdir(cdir):
            continue  # a class absent from val/ simply has no test images
        for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fn), idx))
    if not samples:
        raise DataError(f"imagefolder: no images ({', '.join(IMG_EXTENSIONS)}) found in "
                        f"{folder}; {_imagefolder_layout_hint(root)}")
    return samples, classes
