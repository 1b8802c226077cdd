"""Small WebDataset shards and Parquet files written with the libraries' own writers
(``webdataset.ShardWriter`` / ``TarWriter``, ``pyarrow.parquet``), for the shard tests and the
error table."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def photo_bytes(k: int, fmt: str = "JPEG") -> bytes:
    """A smooth picture of 4:3 or 3:4 (k odd / even), encoded; distinct for each k."""
    h, w = (24, 32) if k % 2 else (32, 24)
    g = np.random.default_rng(k)
    small = g.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def samples(n: int, classes: int = 3, labelled: bool = True) -> list[dict]:
    """``n`` WebDataset samples: ``__key__``, ``jpg`` and (labelled) ``cls``."""
    out = []
    for k in range(n):
        s = {"__key__": f"{k:06d}", "jpg": photo_bytes(k)}
        if labelled:
            s["cls"] = k % classes
        out.append(s)
    return out


def write_wds(folder: Path, n: int = 12, per_shard: int = 5, prefix: str = "train",
              classes: int = 3, labelled: bool = True) -> str:
    """Shards ``folder/<prefix>-%06d.tar`` of ``per_shard`` samples written by
    ``webdataset.ShardWriter``; returns their brace pattern."""
    import webdataset as wds  # optional extra: the test modules skip without it

    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / f"{prefix}-%06d.tar"), maxcount=per_shard,
                         verbose=0) as sink:
        for s in samples(n, classes, labelled):
            sink.write(s)
    last = (n - 1) // per_shard
    return str(folder / f"{prefix}-{{000000..{last:06d}}}.tar")


def hf_metadata(names: list[str] | None) -> dict:
    """The ``huggingface`` schema metadata ``datasets`` writes for Image (+ ClassLabel)."""
    features = {"image": {"_type": "Image"}}
    if names:
        features["label"] = {"names": names, "_type": "ClassLabel"}
    return {"huggingface": json.dumps({"info": {"features": features}})}


def write_parquet(path: Path, first: int, n: int, classes: int = 3, row_group: int = 4,
                  names: list[str] | None = None, labelled: bool = True,
                  image_column: str = "image") -> Path:
    """One Parquet file in the Hugging Face image layout, written by pyarrow: images
    ``first .. first+n-1`` as structs ``{bytes, path}``, an int64 ``label``."""
    import pyarrow as pa  # optional extra: the test modules skip without it
    import pyarrow.parquet as pq  # optional extra, as above

    path.parent.mkdir(parents=True, exist_ok=True)
    ks = range(first, first + n)
    images = pa.array([{"bytes": photo_bytes(k), "path": f"{k:06d}.jpg"} for k in ks],
                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    cols = {image_column: images}
    if labelled:
        cols["label"] = pa.array([k % classes for k in ks], type=pa.int64())
    table = pa.table(cols).replace_schema_metadata(hf_metadata(names))
    pq.write_table(table, path, row_group_size=row_group)
    return path
