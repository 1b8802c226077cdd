"""WebDataset shards (``data.name: webdataset``): tar files of samples, read by random access.

A shard is an uncompressed tar whose members are grouped into samples by their basename, as
the ``webdataset`` library groups them (``webdataset.tariterators.base_plus_ext``: the key is
the name up to the first dot, the field is the rest, lower-cased; ``__*__`` members are
metadata and skipped). A sample holds one image (``jpg``, ``jpeg``, ``png`` or ``webp``; the
first of these present) and optionally its class index (``cls``, an integer as text).

At start each shard is indexed once with Python's ``tarfile`` (the reader WebDataset itself
streams with): the offset and size of every sample's image and its class. Item i is then
the image of the i-th sample over the shards in the pattern's order, read with one
``os.pread`` from a file kept open per loader worker. So the seeded sampler, the per-image
seeds of the crops, a mid-epoch resume and the split over torchrun ranks work as for an
image folder, whatever the number of shards. The cost: the index pass (one read of every
member header, and of every ``cls``) and one open file per shard and worker (at most
:data:`MAX_OPEN` at a time). Remote shards are staged first (:mod:`sslkit.data.shardfiles`).

Class names come from ``classes.txt`` (one name a line, line i = class i) beside the shards,
as sslkit's shard writer leaves it (``python -m sslkit.data.shards``); without one they are
the numbers. A sample without ``cls`` is unlabelled (-1: pretraining only).
"""
from __future__ import annotations

import functools
import os
import re
import tarfile
from collections import OrderedDict

import numpy as np
import torch

from sslkit.data.encoded import EncodedImages
from sslkit.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, register_dataset, resize_side
from sslkit.data.shardfiles import split_names, stage
from sslkit.errors import DataError

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
LABEL_FIELD = "cls"
CLASSES_FILE = "classes.txt"
MAX_OPEN = 64  # shard files one process keeps open
_META = re.compile(r"__[^/]*__($|/)")  # webdataset.tariterators.tar_file_iterator's skip_meta


def webdataset_module():
    """The ``webdataset`` package (an optional extra), or a one-line error saying how to get it."""
    try:
        import webdataset  # optional extra: only the shard sources and the writer need it
    except ImportError:
        raise DataError("data.name=webdataset needs the webdataset package: pip install -e "
                        "'.[webdataset]' (or pip install webdataset)") from None
    return webdataset


def _index_shard(path: str, base_plus_ext) -> tuple[list[int], list[int], list[int]]:
    """``(offsets, sizes, labels)`` of the images of the samples of one shard, in tar order
    (remembered for the process while the file keeps its size and time: a run reads its
    training shards for pretraining and again for the online kNN's bank)."""
    st = os.stat(path)
    return _index_unchanged(path, st.st_size, st.st_mtime_ns, base_plus_ext)


@functools.lru_cache(maxsize=4096)
def _index_unchanged(path: str, size: int, mtime_ns: int, base_plus_ext
                     ) -> tuple[list[int], list[int], list[int]]:
    with open(path, "rb") as fh:
        if fh.read(2) == b"\x1f\x8b":
            raise DataError(f"webdataset: shard '{path}' is compressed (gzip); random access "
                            f"needs uncompressed .tar shards: gunzip it, or write the shards "
                            f"with python -m sslkit.data.shards")
    offsets, sizes, labels = [], [], []
    key, fields, last = None, {}, "(none: the first header)"

    def flush() -> None:
        if key is None:
            return
        image = next((f for f in IMAGE_FIELDS if f in fields), None)
        if image is None:
            raise DataError(f"webdataset: sample '{key}' of shard '{path}' has no image field "
                            f"({', '.join(IMAGE_FIELDS)}); its fields are "
                            f"{', '.join(sorted(fields)) or 'none'}; rewrite the shard with the "
                            f"image under one of these extensions")
        offsets.append(fields[image][0])
        sizes.append(fields[image][1])
        labels.append(fields.get(LABEL_FIELD, (0, 0, -1))[2])

    try:
        with tarfile.open(path, "r:") as tar:  # uncompressed, seekable: the index needs offsets
            for m in tar:
                if m.offset_data + m.size > size:
                    raise tarfile.ReadError("unexpected end of data")
                last = m.name
                if not m.isreg() or _META.match(m.name):
                    continue
                prefix, suffix = base_plus_ext(m.name)
                if prefix is None:
                    continue
                suffix = suffix.lower()
                if prefix != key:
                    flush()
                    key, fields = prefix, {}
                if suffix in fields:
                    raise DataError(f"webdataset: sample '{key}' of shard '{path}' has two "
                                    f"'{suffix}' members; give each sample one file per field")
                label = -1
                if suffix == LABEL_FIELD:
                    text = tar.extractfile(m).read()
                    try:
                        label = int(text.decode("ascii").strip())
                    except (UnicodeDecodeError, ValueError):
                        raise DataError(f"webdataset: the cls of sample '{key}' in shard "
                                        f"'{path}' is {text[:20]!r}, not an integer class "
                                        f"index") from None
                fields[suffix] = (m.offset_data, m.size, label)
            flush()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"webdataset: shard '{path}' is truncated or corrupt after member "
                        f"'{last}' ({type(e).__name__}: {e}); copy or write the shard again") from None
    return offsets, sizes, labels


def _class_names(folders: list[str], labels: np.ndarray) -> list[str]:
    """Names from the first ``classes.txt`` found in ``folders``, else the numbers."""
    top = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    for folder in folders:
        path = os.path.join(folder, CLASSES_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                names = [ln.rstrip("\n") for ln in fh if ln.strip()]
            if top > len(names):
                raise DataError(f"webdataset: '{path}' names {len(names)} classes, but the "
                                f"shards hold class index {top - 1}; fix the file or remove it")
            return names
    return [str(c) for c in range(top)]


class TarShards(EncodedImages):
    """The images of WebDataset shards (see the module docstring): ``paths`` of the shards,
    and per item its shard, the offset and size of its image in it, and its label."""

    replace_hint = "write the shard again without it"

    def __init__(self, paths: list[str], shard: np.ndarray, offset: np.ndarray,
                 size: np.ndarray, labels: np.ndarray, classes: list[str], load_size: int,
                 channels: int = 3, skip_corrupt: bool = False, split: str = ""):
        super().__init__("webdataset", torch.from_numpy(labels), classes, load_size, channels,
                         skip_corrupt, split)
        self.paths, self.shard, self.offset, self.size = paths, shard, offset, size
        self._files: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.offset)

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker opens its own files
            self._files, self._pid = OrderedDict(), os.getpid()
        fd = self._files.get(shard)
        if fd is None:
            if len(self._files) >= MAX_OPEN:
                os.close(self._files.popitem(last=False)[1])
            fd = self._files[shard] = os.open(self.paths[shard], os.O_RDONLY)
        else:
            self._files.move_to_end(shard)
        return fd

    def read(self, i: int) -> bytes:
        shard, size = int(self.shard[i]), int(self.size[i])
        data = os.pread(self._fd(shard), size, int(self.offset[i]))
        if len(data) != size:
            raise OSError(f"read {len(data)} of {size} bytes: the shard is shorter than when "
                          f"it was indexed")
        return data

    def where(self, i: int) -> str:
        path, offset = self.paths[int(self.shard[i])], int(self.offset[i])
        try:
            with tarfile.open(path, "r:") as tar:  # an error message only: find the member
                name = next((m.name for m in tar if m.offset_data == offset), None)
        except (tarfile.TarError, OSError):
            name = None
        return f"{path}:{name}" if name else f"{path} at byte {offset}"

    def subset(self, indices: torch.Tensor) -> "TarShards":
        idx = torch.as_tensor(indices, dtype=torch.int64).numpy()
        return TarShards(self.paths, self.shard[idx], self.offset[idx], self.size[idx],
                         self.labels.numpy()[idx], self.classes, self.load_size, self.channels,
                         self.skip_corrupt, self.split)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": OrderedDict()}  # open files stay in their process


def read_shards(names: list[str], root_names: list[str], load_size: int, channels: int = 3,
                skip_corrupt: bool = False, split: str = "") -> TarShards:
    """Index the shards ``names`` (local paths or remote URLs, staged first) into a
    :class:`TarShards`; ``root_names`` (the training shards) are where ``classes.txt`` is
    looked for after the split's own folder."""
    wds = webdataset_module()
    paths = stage("webdataset", names, lambda url: wds.gopen(url, "rb"))
    shard, offset, size, labels = [], [], [], []
    for k, path in enumerate(paths):
        o, s, y = _index_shard(path, wds.tariterators.base_plus_ext)
        shard += [k] * len(o)
        offset += o
        size += s
        labels += y
    if not offset:
        raise DataError(f"webdataset: the {len(paths)} shard(s) of split '{split}' hold no "
                        f"samples (e.g. '{names[0]}')")
    labels_np = np.asarray(labels, dtype=np.int64)
    folders = list(dict.fromkeys(os.path.dirname(p) for p in [names[0], root_names[0]]
                                 if "://" not in p and not p.startswith("pipe:")))
    return TarShards(paths, np.asarray(shard, dtype=np.int32), np.asarray(offset, dtype=np.int64),
                     np.asarray(size, dtype=np.int64), labels_np,
                     _class_names(folders, labels_np), load_size, channels, skip_corrupt, split)


@register_dataset("webdataset", DatasetInfo(None, 3, None, IMAGENET_MEAN, IMAGENET_STD,
                                            yields="files"))
def _webdataset(req) -> TarShards:
    wds = webdataset_module()
    expand = wds.shardlists.expand_urls
    names = split_names("webdataset", req.root, req.val_root, req.split, ".tar", expand)
    root_names = split_names("webdataset", req.root, None, "train", ".tar", expand)
    load_size = req.load_size if req.load_size is not None else resize_side(req.image_size or 224)
    return read_shards(names, root_names, load_size, req.channels, req.skip_corrupt, req.split)
