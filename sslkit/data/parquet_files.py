"""Parquet files in the Hugging Face image layout (``data.name: parquet``), and the Arrow
files of a ``datasets`` ``save_to_disk`` folder, read by random access with pyarrow.

The layout (the ``datasets`` ``Image`` feature as stored): an image column
(``data.image_column``, default ``image``) of structs ``{bytes: binary, path: string}`` (or
plain binary), and optionally an integer label column (``data.label_column``, default
``label``; a missing column or a null is unlabelled, -1). Class names come from the
``huggingface`` schema metadata (a ``ClassLabel``'s names), as ``datasets`` writes it
(``to_parquet``, ``push_to_hub``, ``save_to_disk``) and sslkit's shard writer does; without
it they are the numbers. An image with null bytes and a path is read from that file
(relative to the Parquet file's folder).

``data.root`` is a folder (the hub's ``train-*.parquet`` / ``validation-*.parquet`` split
naming, also under its ``data/`` folder; or a ``save_to_disk`` folder, of a ``Dataset``
(``state.json``) or a ``DatasetDict`` (``dataset_dict.json``: its ``train`` and
``validation`` splits)), a pattern or a file (:mod:`sslkit.data.shardfiles`).

At start only the footers and the label column are read. Item i is row i over the files in
order; reading it reads its row group's image column (Parquet) or maps its record batch
(Arrow, memory-mapped), and each loader worker keeps the last :data:`GROUPS_KEPT` groups:
sequential reads (evaluation) read each group once, but random ones (pretraining) read and
decompress a whole group per image. The ``datasets`` library writes groups of 100 images
(about 11 MB at ImageNet's sizes; measured 1.4 ms per random read of 100 images of 43 KB,
beside about 6 ms to decode and crop one); sslkit's writer writes 16.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any, Optional

import numpy as np
import torch

from sslkit.data.encoded import EncodedImages
from sslkit.data.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo, register_dataset, resize_side
from sslkit.data.shardfiles import split_names
from sslkit.errors import DataError

GROUPS_KEPT = 4  # row groups (record batches) one process keeps decoded
MAX_OPEN = 64  # Parquet files one process keeps open
SPLIT_DIRS = {"train": ("train",), "test": ("validation", "val")}


def pyarrow_module():
    """``pyarrow`` (an optional extra), or a one-line error saying how to get it."""
    try:
        import pyarrow  # optional extra: only the Parquet source and the writer need it
        import pyarrow.parquet  # noqa: F401  (registers pyarrow.parquet)
    except ImportError:
        raise DataError("data.name=parquet needs pyarrow: pip install -e '.[parquet]' (or pip "
                        "install pyarrow)") from None
    return pyarrow


# --------------------------------------------------------------------------- the files
def _saved_files(folder: str) -> list[str]:
    """The Arrow files of a ``Dataset.save_to_disk`` folder (its ``state.json``)."""
    state = os.path.join(folder, "state.json")
    try:
        with open(state, encoding="utf-8") as fh:
            names = [f["filename"] for f in json.load(fh)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"parquet: cannot read '{state}' of a save_to_disk folder "
                        f"({type(e).__name__}: {e}); save the dataset again") from None
    return [os.path.join(folder, n) for n in names]


def split_files(root: str, val_root: Optional[str], split: str) -> list[str]:
    """The Parquet or Arrow files of ``split`` (see the module docstring)."""
    test, own = split == "test", split == "test" and bool(val_root)
    spec = os.path.expanduser(val_root if own else root)
    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, "dataset_dict.json")):  # DatasetDict.save_to_disk
            names = SPLIT_DIRS["test" if test else "train"]
            sub = next((os.path.join(spec, n) for n in names
                        if os.path.isdir(os.path.join(spec, n))), None)
            if sub is None:
                raise DataError(f"parquet: the DatasetDict folder '{spec}' has no "
                                f"{' or '.join(names)} split; set "
                                f"data.{'val_root' if test else 'root'} to that split's folder")
            return _saved_files(sub)
        if os.path.isfile(os.path.join(spec, "state.json")):  # Dataset.save_to_disk
            if test and not own:
                raise DataError(f"parquet: kNN and the linear probe need the evaluation split: "
                                f"set data.val_root to its files or save_to_disk folder, or "
                                f"--set eval.knn_every=0 to pretrain without the online kNN")
            return _saved_files(spec)
        data = os.path.join(spec, "data")
        if os.path.isdir(data) and not any(e.endswith(".parquet") for e in os.listdir(spec)):
            spec = data  # a hub repository: data/train-*.parquet
    expand = lambda s: s.split("::")  # noqa: E731  (no braces in hub names; globs below)
    if own:
        return split_names("parquet", root, spec, split, ".parquet", expand)
    return split_names("parquet", spec, None, split, ".parquet", expand)


def _class_names(schema, label_column: str, labels: np.ndarray, path: str) -> list[str]:
    top = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        feature = json.loads(meta)["info"]["features"][label_column] if meta else {}
        names = [str(n) for n in feature.get("names") or []]
    except (ValueError, KeyError, TypeError, AttributeError):
        names = []
    if names and top > len(names):
        raise DataError(f"parquet: '{path}' holds class index {top - 1} but its ClassLabel "
                        f"names {len(names)} classes")
    return names or [str(c) for c in range(top)]


def _check_image_column(schema, column: str, path: str, pa) -> None:
    if column not in schema.names:
        raise DataError(f"parquet: '{path}' has no column '{column}' (data.image_column); its "
                        f"columns are {', '.join(schema.names)}; set data.image_column to the "
                        f"column of the images")
    t = schema.field(column).type
    binary = (pa.types.is_binary(t) or pa.types.is_large_binary(t))
    if not (binary or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)):
        raise DataError(f"parquet: column '{column}' of '{path}' is {t}, not images (structs "
                        f"with bytes, as the Hugging Face Image feature, or binary); set "
                        f"data.image_column to the column of the images")


def _open(path: str, pa) -> tuple[Any, Any, np.ndarray]:
    """``(reader, schema, group starts)``: a ParquetFile (row groups) or an Arrow table
    (memory-mapped, record batches: a save_to_disk file)."""
    if not path.endswith(".parquet"):
        table = pa.ipc.open_stream(pa.memory_map(path)).read_all()
        sizes = [b.num_rows for b in table.to_batches()]
        return table, table.schema, np.cumsum([0] + sizes)[:-1].astype(np.int64)
    pf = pa.parquet.ParquetFile(path, memory_map=True)
    sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
    return pf, pf.schema_arrow, np.cumsum([0] + sizes)[:-1].astype(np.int64)


def _labels(reader, schema, column: str, rows: int, pa) -> np.ndarray:
    if column not in schema.names:
        return np.full(rows, -1, dtype=np.int64)
    col = (reader.column(column) if isinstance(reader, pa.Table)
           else reader.read(columns=[column]).column(column))
    return np.asarray(col.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


class ParquetImages(EncodedImages):
    """The images of Parquet / Arrow files (see the module docstring): ``paths`` of the
    files with each file's group starts, and per item its file and row."""

    replace_hint = "write the file again without it"

    def __init__(self, paths: list[str], starts: list[np.ndarray], file: np.ndarray,
                 row: np.ndarray, labels: np.ndarray, classes: list[str], image_column: str,
                 load_size: int, channels: int = 3, skip_corrupt: bool = False, split: str = ""):
        super().__init__("parquet", torch.from_numpy(labels), classes, load_size, channels,
                         skip_corrupt, split)
        self.paths, self.starts, self.file, self.row = paths, starts, file, row
        self.image_column = image_column
        self._readers: OrderedDict[int, Any] = OrderedDict()
        self._groups: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.row)

    def _group(self, f: int, g: int):
        if self._pid != os.getpid():  # a forked worker opens its own files
            self._readers, self._groups, self._pid = OrderedDict(), OrderedDict(), os.getpid()
        if (f, g) in self._groups:
            self._groups.move_to_end((f, g))
            return self._groups[(f, g)]
        pa = pyarrow_module()
        reader = self._readers.get(f)
        if reader is None:
            if len(self._readers) >= MAX_OPEN:
                self._readers.popitem(last=False)
            reader = self._readers[f] = _open(self.paths[f], pa)[0]
        else:
            self._readers.move_to_end(f)
        if isinstance(reader, pa.Table):
            group = reader.to_batches()[g].column(self.image_column)
        else:
            group = reader.read_row_group(g, columns=[self.image_column]).column(0)
        group = group.combine_chunks() if hasattr(group, "combine_chunks") else group
        if len(self._groups) >= GROUPS_KEPT:
            self._groups.popitem(last=False)
        self._groups[(f, g)] = group
        return group

    def read(self, i: int) -> bytes:
        f, r = int(self.file[i]), int(self.row[i])
        g = int(np.searchsorted(self.starts[f], r, side="right")) - 1
        value = self._group(f, g)[r - int(self.starts[f][g])].as_py()
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path:
                full = os.path.join(os.path.dirname(self.paths[f]), os.path.expanduser(path))
                with open(full if os.path.isfile(full) else path, "rb") as fh:
                    return fh.read()
            value = data
        if value is None:
            raise OSError("the image is null")
        return value

    def where(self, i: int) -> str:
        return f"{self.paths[int(self.file[i])]} row {int(self.row[i])}"

    def subset(self, indices: torch.Tensor) -> "ParquetImages":
        idx = torch.as_tensor(indices, dtype=torch.int64).numpy()
        return ParquetImages(self.paths, self.starts, self.file[idx], self.row[idx],
                             self.labels.numpy()[idx], self.classes, self.image_column,
                             self.load_size, self.channels, self.skip_corrupt, self.split)

    def __getstate__(self) -> dict:  # open files and decoded groups stay in their process
        return {**self.__dict__, "_readers": OrderedDict(), "_groups": OrderedDict()}


def read_files(paths: list[str], image_column: str = "image", label_column: str = "label",
               load_size: int = 256, channels: int = 3, skip_corrupt: bool = False,
               split: str = "") -> ParquetImages:
    """Index the Parquet / Arrow ``paths`` (footers and labels only) into a
    :class:`ParquetImages`."""
    pa = pyarrow_module()
    starts, files, rows, labels, classes = [], [], [], [], []
    for k, path in enumerate(paths):
        try:
            reader, schema, st = _open(path, pa)
            n = reader.num_rows if isinstance(reader, pa.Table) else reader.metadata.num_rows
            _check_image_column(schema, image_column, path, pa)
            y = _labels(reader, schema, label_column, n, pa)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(f"parquet: cannot read '{path}' ({type(e).__name__}: {e}); it is "
                            f"not a Parquet (or save_to_disk Arrow) file, or it is truncated; "
                            f"copy or write it again") from None
        starts.append(st)
        files.append(np.full(n, k, dtype=np.int32))
        rows.append(np.arange(n, dtype=np.int64))
        labels.append(y)
        if not classes:
            classes = _class_names(schema, label_column, y, path)
    label_np = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    if not label_np.size:
        raise DataError(f"parquet: the {len(paths)} file(s) of split '{split}' hold no rows "
                        f"(e.g. '{paths[0]}')")
    top = int(label_np.max()) + 1
    if top > len(classes):
        classes = [str(c) for c in range(top)] if not classes else classes + [
            str(c) for c in range(len(classes), top)]
    return ParquetImages(paths, starts, np.concatenate(files), np.concatenate(rows), label_np,
                         classes, image_column, load_size, channels, skip_corrupt, split)


@register_dataset("parquet", DatasetInfo(None, 3, None, IMAGENET_MEAN, IMAGENET_STD,
                                         yields="files"))
def _parquet(req) -> ParquetImages:
    pyarrow_module()
    paths = split_files(req.root, req.val_root, req.split)
    load_size = req.load_size if req.load_size is not None else resize_side(req.image_size or 224)
    return read_files(paths, req.image_column, req.label_column, load_size, req.channels,
                      req.skip_corrupt, req.split)
