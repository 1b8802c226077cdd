"""ImageFolder data: ``root/train/<class>/**/<image>`` and ``root/val/<class>/**/<image>``.

Each file is decoded with PIL on the CPU (in DataLoader workers) and resized to a fixed square
``load_size``: the shorter side is resized to ``load_size`` (bilinear, antialiased) and the
centre square is kept. Random crops are then taken from that square on the device, whereas
the reference ImageNet recipes crop the original (full, non-square) image: the crops here
never see the borders that the centre square drops (for a 4:3 photo, 1/8 of the width on each
side), and their resolution is capped at ``load_size``. The evaluation view (centre crop
``image_size`` of the ``load_size`` square) equals the usual Resize(256)+CenterCrop(224)
exactly. ``data.class_list`` selects and orders the classes (e.g. ImageNet-100).
"""
from __future__ import annotations

import os
from typing import Callable, Optional, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sslkit.errors import DataError

T = TypeVar("T")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolderDataset(Dataset):
    """``root/<split>/<class>/**/<image>``: decoded with PIL and resized to a fixed square.

    Each image is converted to RGB (grayscale, palette and RGBA included; the alpha channel
    is dropped, as torchvision's loader does) or to L when ``channels=1``; the shorter side is
    resized to ``load_size`` (bilinear, antialiased) and the centre ``load_size`` square kept.
    An undecodable file raises DataError naming it; with ``skip_corrupt`` the next decodable
    image (in index order) is returned instead and the file is remembered in ``skipped``.
    """

    def __init__(self, samples: list[tuple[str, int]], classes: list[str], load_size: int,
                 channels: int = 3, skip_corrupt: bool = False, split: str = ""):
        self.samples = samples
        self.classes = classes
        self.num_classes = len(classes)
        self.load_size = int(load_size)
        self.channels = channels
        self.skip_corrupt = skip_corrupt
        self.name, self.split = "imagefolder", split
        self.skipped: set[str] = set()
        self.labels = torch.tensor([lab for _, lab in samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def decode(self, path: str) -> torch.Tensor:
        """Decode ``path`` to uint8 (C, load_size, load_size); raises on a bad file."""
        size = self.load_size
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("L" if self.channels == 1 else "RGB", (size, size))  # fast JPEG downscale
            im = im.convert("L" if self.channels == 1 else "RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def load(self, i: int) -> tuple[torch.Tensor, int, list[str]]:
        """``(image, label, skipped paths)``; raises DataError on a bad file unless skipping."""
        return self.first_decodable(i, self.decode)

    def first_decodable(self, i: int, decode: Callable[[str], T]) -> tuple[T, int, list[str]]:
        """``(decode(path of sample i), label, skipped paths)``. A file ``decode`` fails on
        raises DataError naming it; with ``skip_corrupt`` the next samples (in index order)
        are tried instead and the failed paths returned."""
        skipped: list[str] = []
        n = len(self.samples)
        for j in range(n):
            path, label = self.samples[(i + j) % n]
            try:
                return decode(path), label, skipped
            except Exception as e:  # any decoder failure (OSError, SyntaxError, bomb, ...)
                if not self.skip_corrupt:
                    raise DataError(
                        f"imagefolder: cannot decode image '{path}' ({type(e).__name__}: "
                        f"{e}); delete or replace it, or set data.skip_corrupt=true to skip "
                        f"undecodable images") from None
                skipped.append(path)
        raise DataError(f"imagefolder: none of the {n} images of split '{self.split}' could be "
                        f"decoded (e.g. '{skipped[0]}')")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label, skipped = self.load(i)
        self.skipped.update(skipped)
        return image, label

    def subset(self, indices: torch.Tensor) -> "ImageFolderDataset":
        return ImageFolderDataset([self.samples[int(i)] for i in indices], self.classes,
                                  self.load_size, self.channels, self.skip_corrupt, self.split)

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({self.split}: {len(self)} images, {self.num_classes} "
                f"classes, load_size={self.load_size})")


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
