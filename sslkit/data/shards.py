"""``python -m sslkit.data.shards SRC OUT --format webdataset|parquet [--shard-size N]``: write
an image folder (or any dataset sslkit reads, ``--dataset NAME``) as WebDataset shards or
Parquet files that ``data.name: webdataset`` / ``parquet`` read back.

* The images' bytes are written unchanged (a JPEG stays the same JPEG). A WebDataset sample
  names its image by format (``jpg``, ``png``, ``webp``); an image in another format (BMP,
  TIFF, ...) is re-encoded as PNG, losslessly, and counted; a dataset of tensors (CIFAR,
  ...) is written as PNGs.
* Class indices are sslkit's (ImageFolder: the sorted class folders, or ``data.class_list``'s
  order), the names written beside them: ``OUT/classes.txt`` (line i = class i) and, for
  Parquet, the ``datasets`` ``ClassLabel`` in each file's schema, so that
  ``datasets.load_dataset("parquet", ...)`` reads them too. An unlabelled image has no
  ``cls`` (WebDataset) or a null label (Parquet).
* The training split goes to ``train-*`` and the evaluation split, where the source has one
  (an image folder's ``val/``), to ``val-*`` (WebDataset: ``train-000000.tar``, ...; Parquet,
  the Hugging Face hub's naming: ``train-00000-of-00004.parquet``, ``validation-...``), in
  sslkit's index order, ``--shard-size`` images per shard (Parquet: row groups of
  :data:`ROW_GROUP` images).
* OUT must not exist or be empty. Everything is written into a temporary folder beside it
  and renamed to OUT at the end, so an error (or Ctrl-C) leaves nothing half-written.

At the end it prints the counts, the class table and the ``--set`` keys that pretrain on
the result.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
from typing import Any, Callable, Iterator, Optional

import torch
from PIL import Image
from tqdm import tqdm

from sslkit.data.datasets import build_dataset
from sslkit.data.encoded import EncodedImages
from sslkit.data.imagefolder import IMG_EXTENSIONS
from sslkit.data.parquet_files import pyarrow_module
from sslkit.data.tar_shards import CLASSES_FILE, webdataset_module
from sslkit.errors import DataError, OneLineParser, UserError, guard

FORMATS = ("webdataset", "parquet")
# images per Parquet row group: random access reads a whole group's images (the datasets
# library writes 100; 16 keeps a read near one ImageNet-size image's decode time)
ROW_GROUP = 16
_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))


def image_field(data: bytes) -> Optional[str]:
    """The WebDataset field of encoded image bytes (``jpg``, ``png``, ``webp``), or None."""
    for magic, field in _MAGIC:
        if data.startswith(magic):
            return field
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def png_bytes(image: Any) -> bytes:
    """PNG bytes of a PIL image or a uint8 (C, H, W) tensor."""
    if isinstance(image, torch.Tensor):
        arr = image.permute(1, 2, 0).numpy()
        image = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


class Items:
    """The images of one split as ``(encoded bytes, field, label, name)``, with a count of
    the ones re-encoded as PNG."""

    def __init__(self, ds):
        self.ds, self.reencoded = ds, 0

    def __len__(self) -> int:
        return len(self.ds)

    def __iter__(self) -> Iterator[tuple[bytes, str, int, str]]:
        ds = self.ds
        for i in range(len(ds)):
            label = int(ds.labels[i])
            if not isinstance(ds, EncodedImages):  # decoded tensors: lossless PNG
                yield png_bytes(ds[i][0]), "png", label, f"{i:08d}"
                continue
            try:
                data = ds.read(i)
            except Exception as e:  # any reader failure: name the image
                raise DataError(f"cannot read image '{ds.where(i)}' ({type(e).__name__}: {e})"
                                f"; delete or replace it") from None
            field = image_field(data)
            if field is None:
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        im.load()
                        data = png_bytes(im)
                except Exception as e:  # any decoder failure
                    raise DataError(f"image '{ds.where(i)}' is in no format the shards keep "
                                    f"(JPEG, PNG, WebP) and does not decode ({type(e).__name__}"
                                    f": {e}); delete or replace it") from None
                field = "png"
                self.reencoded += 1
            yield data, field, label, ds.where(i)


# --------------------------------------------------------------------------- the writers
def write_webdataset(items: Items, folder: str, prefix: str, shard_size: int,
                     bar: Callable[[], None]) -> list[str]:
    wds = webdataset_module()
    with wds.ShardWriter(os.path.join(folder, f"{prefix}-%06d.tar"), maxcount=shard_size,
                         verbose=0) as sink:
        for k, (data, field, label, _) in enumerate(items):
            sample = {"__key__": f"{k:09d}", field: data}
            if label >= 0:
                sample["cls"] = label
            sink.write(sample)
            bar()
    return sorted(n for n in os.listdir(folder) if n.startswith(f"{prefix}-"))


def hf_schema(pa, classes: list[str], labelled: bool):
    """The Hugging Face image layout: ``image`` structs ``{bytes, path}``, an int64
    ``label`` with its ``ClassLabel`` names in the ``huggingface`` metadata."""
    fields = [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))]
    features: dict = {"image": {"_type": "Image"}}
    if labelled:
        fields.append(("label", pa.int64()))
        features["label"] = ({"names": classes, "_type": "ClassLabel"} if classes
                             else {"dtype": "int64", "_type": "Value"})
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema(fields, metadata=meta)


def write_parquet(items: Items, folder: str, prefix: str, shard_size: int,
                  bar: Callable[[], None], classes: list[str]) -> list[str]:
    pa = pyarrow_module()
    labelled = bool((items.ds.labels >= 0).any())
    schema = hf_schema(pa, classes, labelled)
    files = -(-len(items) // shard_size)
    names = [f"{prefix}-{k:05d}-of-{files:05d}.parquet" for k in range(files)]
    writer, rows = None, []

    def flush() -> None:
        cols = [pa.array([{"bytes": d, "path": p} for d, _, _, p in rows], schema.field(0).type)]
        if labelled:
            cols.append(pa.array([y if y >= 0 else None for _, _, y, _ in rows], pa.int64()))
        writer.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=ROW_GROUP)
        rows.clear()

    try:
        for k, (data, field, label, name) in enumerate(items):
            if k % shard_size == 0:
                if writer is not None:
                    flush()
                    writer.close()
                writer = pa.parquet.ParquetWriter(os.path.join(folder, names[k // shard_size]),
                                                  schema)
            rows.append((data, field, label, os.path.basename(name)))
            if len(rows) == ROW_GROUP:
                flush()
            bar()
        if writer is not None:
            flush()
    finally:
        if writer is not None:
            writer.close()
    return names


# --------------------------------------------------------------------------- the command
def _splits(dataset: str, src: str, class_list: Optional[str]) -> list[tuple[str, Any]]:
    """``[(split, dataset)]``: the training split, and the evaluation split where the source
    has one."""
    kw = dict(image_size=224, class_list=class_list)
    out = [("train", build_dataset(dataset, src, "pretrain", **kw))]
    val = os.path.join(src, "val")
    if dataset == "imagefolder" and not any(
            f.lower().endswith(IMG_EXTENSIONS) for _, _, files in os.walk(val) for f in files):
        return out  # no val/ folder, or one without images
    try:
        out.append(("val", build_dataset(dataset, src, "test", **kw)))
    except DataError as e:
        if dataset == "imagefolder":
            raise
        print(f"note: the training split only; the evaluation split could not be read: {e}")
    return out


def _check_out(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"OUT '{out}' is a file; give a new or empty folder")
    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"OUT '{out}' is not empty; give a new or empty folder, so that no "
                        f"file of another dataset is mixed in or overwritten")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UserError(f"OUT '{out}' cannot be created: '{parent}' does not exist")


def _pattern(out: str, names: list[str], prefix: str) -> str:
    """The brace pattern of WebDataset shards ``prefix-000000.tar`` ..."""
    return os.path.join(out, f"{prefix}-{{000000..{len(names) - 1:06d}}}.tar")


def convert(src: str, out: str, fmt: str, shard_size: int = 1000, dataset: str = "imagefolder",
            class_list: Optional[str] = None, progress: Optional[bool] = None) -> dict:
    """Write ``src`` as ``fmt`` shards into ``out`` (see the module docstring); returns
    ``{split: (images, files)}`` and the class names under ``"classes"``."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt} is invalid: use {' or '.join(FORMATS)}")
    if shard_size < 1:
        raise UserError(f"--shard-size {shard_size} is invalid: give images per shard, >= 1")
    (webdataset_module if fmt == "webdataset" else pyarrow_module)()
    out = os.path.abspath(os.path.expanduser(out))
    _check_out(out)
    splits = _splits(dataset, os.path.expanduser(src), class_list)
    classes = list(splits[0][1].classes) if hasattr(splits[0][1], "classes") else []
    tmp = f"{out}.partial-{os.getpid()}"
    os.makedirs(tmp)
    result: dict = {"classes": classes, "reencoded": 0}
    try:
        total = sum(len(ds) for _, ds in splits)
        with tqdm(total=total, unit="img", desc="shards", file=sys.stdout,
                  disable=progress is False or (progress is None and not sys.stdout.isatty())
                  ) as bar:
            for split, ds in splits:
                items = Items(ds)
                if fmt == "webdataset":
                    names = write_webdataset(items, tmp, split, shard_size, lambda: bar.update())
                else:
                    names = write_parquet(items, tmp, "validation" if split == "val" else split,
                                          shard_size, lambda: bar.update(), classes)
                result[split] = (len(ds), names, torch.bincount(
                    ds.labels[ds.labels >= 0], minlength=len(classes)).tolist())
                result["reencoded"] += items.reencoded
        if classes:
            with open(os.path.join(tmp, CLASSES_FILE), "w", encoding="utf-8") as fh:
                fh.write("".join(f"{c}\n" for c in classes))
        if os.path.isdir(out):
            os.rmdir(out)  # empty, checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def report(result: dict, out: str, fmt: str) -> str:
    """The summary printed at the end: counts, the class table, the keys to pretrain with."""
    out = os.path.abspath(os.path.expanduser(out))
    lines = []
    for split in ("train", "val"):
        if split in result:
            n, names, _ = result[split]
            lines.append(f"wrote {n} {'training' if split == 'train' else 'evaluation'} images "
                         f"in {len(names)} {fmt} file(s): {names[0]} ... {names[-1]}")
    if result["reencoded"]:
        lines.append(f"note: {result['reencoded']} image(s) in a format shards do not keep "
                     f"(BMP, TIFF, ...) were re-encoded as PNG (lossless)")
    classes = result["classes"]
    if classes:
        counts = result["train"][2]
        lines.append(f"{len(classes)} classes (OUT/{CLASSES_FILE}; index, training images, name):")
        show = list(range(len(classes))) if len(classes) <= 40 else [*range(20), -1, *range(
            len(classes) - 5, len(classes))]
        lines += ["  ..." if c < 0 else f"  {c:5d} {counts[c]:8d}  {classes[c]}" for c in show]
    else:
        lines.append("no classes: unlabelled images (pretraining only)")
    keys = [f"data.name={fmt}"]
    if fmt == "webdataset":
        keys.append(f"'data.root={_pattern(out, result['train'][1], 'train')}'")
        if "val" in result:
            keys.append(f"'data.val_root={_pattern(out, result['val'][1], 'val')}'")
    else:
        keys.append(f"data.root={out}")  # the hub's split naming: train-* and validation-*
    lines.append("pretrain on them with: --set " + " ".join(keys))
    return "\n".join(lines)


def _main(argv: Optional[list[str]]) -> int:
    p = OneLineParser(prog="python -m sslkit.data.shards",
                      description="Write an image folder (or any dataset sslkit reads) as "
                                  "WebDataset shards or Parquet files, the images' bytes "
                                  "unchanged, with the class names beside them.")
    p.add_argument("src", metavar="SRC", help="an image folder (train/<class>/, val/<class>/, "
                   "or flat photos), or the data.root of --dataset")
    p.add_argument("out", metavar="OUT", help="a new or empty folder")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--shard-size", type=int, default=1000, metavar="N",
                   help="images per shard / Parquet file (default 1000)")
    p.add_argument("--dataset", default="imagefolder", metavar="NAME",
                   help="the data.name SRC is read as (default imagefolder)")
    p.add_argument("--class-list", default=None, metavar="FILE",
                   help="imagefolder: the classes to write, in this order (data.class_list)")
    args = p.parse_args(argv)
    result = convert(args.src, args.out, args.format, args.shard_size, args.dataset,
                     args.class_list)
    print(report(result, args.out, args.format))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return guard(_main, argv, interrupted="interrupted; nothing was written to OUT")


if __name__ == "__main__":
    sys.exit(main())
