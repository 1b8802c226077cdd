"""The labelled images of the semi-supervised protocol: a seeded, class-balanced fraction of
the training split (``finetune.label_fraction``) or the images a subset file names
(``finetune.subset_file``, the format of SimCLR's ``1percent.txt`` / ``10percent.txt``,
github.com/google-research/simclr ``imagenet_subsets/``). Fine-tuning and the linear probe
both train on it, so the two protocols compare at the same labels.

**Class-balanced fraction.** SimCLR's files give every class the same number of images
(1 %: 12 or 13 of each of the 1000 ImageNet classes, 12,811 in all; 10 %: 128 or 129), not
1 % of each class's own count. :func:`label_fraction_indices` does the same for any split:
``n = max(C, round(fraction * N))`` images, ``n // C`` per class and one more for the first
``n % C`` classes of a seeded order; a class with fewer images gives all it has (its share is
not handed to the others). A fraction of 1 keeps every labelled image. Which images of a class
is a seeded permutation of its images, taking the first ones: for one seed a smaller fraction
is a subset of a larger one (1 % inside 10 %).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch

from sslkit.data.info import dataset_info
from sslkit.errors import ConfigError, DataError


def label_fraction_indices(labels: torch.Tensor, fraction: float, seed: int = 0
                           ) -> torch.Tensor:
    """Sorted indices of the class-balanced, seeded ``fraction`` of a labelled split (module
    doc); unlabelled images (label < 0) are never chosen."""
    if isinstance(fraction, bool) or not 0 < float(fraction) <= 1:
        raise ConfigError(f"finetune.label_fraction={fraction!r} is invalid: give a fraction "
                          f"in (0, 1]")
    labels = torch.as_tensor(labels).long()
    classes = sorted(c for c in torch.unique(labels).tolist() if c >= 0)
    if not classes:
        raise DataError("the training split has no labelled images to take a label fraction of")
    labelled = int((labels >= 0).sum())
    if float(fraction) == 1.0:
        return torch.nonzero(labels >= 0).flatten()
    n = max(len(classes), round(float(fraction) * labelled))
    base, extra = divmod(n, len(classes))
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(classes), generator=g).tolist()  # who gets one more
    gets_extra = set(order[:extra])
    chosen = []
    for pos, c in enumerate(classes):
        members = torch.nonzero(labels == c).flatten()
        perm = members[torch.randperm(members.numel(), generator=g)]
        chosen.append(perm[:base + (pos in gets_extra)])
    return torch.sort(torch.cat(chosen)).values


def read_subset_file(path: str) -> list[str]:
    """The image names of a subset file: one per line, blank lines and ``#`` comments skipped,
    in file order, each once."""
    if not os.path.isfile(path):
        raise DataError(f"finetune.subset_file '{path}' does not exist; give a text file with "
                        f"one image file name per line (SimCLR's 1percent.txt format)")
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read finetune.subset_file '{path}' ({e})") from None
    names: dict[str, None] = {}
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            names.setdefault(entry, None)
    if not names:
        raise DataError(f"finetune.subset_file '{path}' names no images")
    return list(names)


def subset_file_indices(samples: list[tuple[str, int]], names: list[str], path: str
                        ) -> torch.Tensor:
    """Sorted indices of the ``samples`` (an image folder's ``(path, label)`` list) whose
    file name is in ``names``. A name may also be a path ending (``class/file.JPEG``); a name
    matching no image, or more than one, is a one-line DataError naming the first such name
    and how many there are."""
    by_name: dict[str, list[int]] = {}
    for i, (p, _) in enumerate(samples):
        by_name.setdefault(os.path.basename(p), []).append(i)
    chosen, missing, ambiguous = [], [], []
    for name in names:
        hits = by_name.get(os.path.basename(name), [])
        if os.path.basename(name) != name:  # a path ending: keep the images it ends
            tail = os.sep + name.replace("/", os.sep)
            hits = [i for i in hits if samples[i][0].endswith(tail)]
        if not hits:
            missing.append(name)
        elif len(hits) > 1:
            ambiguous.append(name)
        else:
            chosen.append(hits[0])
    if missing:
        raise DataError(f"finetune.subset_file '{path}' names {len(missing)} image(s) that are "
                        f"not in the training folder, e.g. '{missing[0]}' ({len(chosen)} of "
                        f"{len(names)} found); check data.root, or use the file made for this "
                        f"folder")
    if ambiguous:
        raise DataError(f"finetune.subset_file '{path}': {len(ambiguous)} name(s) match more "
                        f"than one image of the training folder, e.g. '{ambiguous[0]}'; give "
                        f"them as class/file name")
    return torch.sort(torch.tensor(chosen, dtype=torch.long)).values


def labelled_subset(ds: Any, data_name: str, label_fraction: Optional[float],
                    subset_file: Optional[str], seed: int = 0) -> Any:
    """``ds`` (the training split) cut to the labelled images of ``finetune.label_fraction``
    or ``finetune.subset_file``; ``ds`` itself when neither is set. A subset file names files,
    so it needs a source that yields files (an image folder)."""
    if subset_file is not None:
        if not dataset_info(data_name).files or not hasattr(ds, "samples"):
            raise ConfigError(f"finetune.subset_file names image files, but data.name="
                              f"{data_name} holds no files; use it with an image folder, or "
                              f"finetune.label_fraction for {data_name}")
        return ds.subset(subset_file_indices(ds.samples, read_subset_file(subset_file),
                                             subset_file))
    if label_fraction is not None:
        return ds.subset(label_fraction_indices(ds.labels, label_fraction, seed))
    return ds
