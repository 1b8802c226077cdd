"""Data at scale: WebDataset shards and Parquet files (the Hugging Face layout), written with
the libraries' own writers and with sslkit's (``python -m sslkit.data.shards``); read back
byte for byte, in the order the libraries read them; the errors; the torchrun split of two
gloo processes; pretraining and evaluation from each; exact resume after kill -9 (slow)."""
from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, assert_one_line_error, run_cli
from helpers_shards import photo_bytes, samples, write_parquet, write_wds
from helpers_tiny import tiny_overrides
from sslkit import config
from sslkit.data import TrainSampler, build_dataset, build_loader
from sslkit.data.crops import CropSpec, SeededSampler, TwoCropDataset
from sslkit.errors import DataError
from sslkit.io.checkpoint import load_checkpoint
from test_crops import jpeg_folder

wds = pytest.importorskip("webdataset")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = CropSpec(size=16, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5)


def _parquet_folder(root: Path, n: int = 15, per_file: int = 5, names=("a", "b", "c")) -> Path:
    for k in range(-(-n // per_file)):
        write_parquet(root / f"train-{k:05d}-of-00003.parquet", per_file * k,
                      min(per_file, n - per_file * k), names=list(names))
    write_parquet(root / "validation-00000-of-00001.parquet", 100, 6, names=list(names))
    return root


# --------------------------------------------------------------------------- reading
def test_webdataset_reads_the_librarys_shards_in_its_order(tmp_path):
    """Shards of webdataset's ShardWriter (12 samples, 5 per shard: 3 shards): the items are
    the samples in the order webdataset itself streams them, the images' bytes unchanged;
    the pattern, a '::' list and the folder give the same items."""
    pattern = write_wds(tmp_path / "s", n=12, per_shard=5)
    ds = build_dataset("webdataset", pattern, "train", image_size=16)
    streamed = list(wds.WebDataset(pattern, shardshuffle=False))
    assert len(ds) == len(streamed) == 12
    assert [ds.read(i) for i in range(12)] == [s["jpg"] for s in streamed]
    assert ds.labels.tolist() == [int(s["cls"]) for s in streamed] == [k % 3 for k in range(12)]
    assert ds.classes == ["0", "1", "2"] and ds.where(7).endswith("train-000001.tar:000007.jpg")
    image, label = ds[7]
    assert image.shape == (3, 18, 18) and image.dtype == torch.uint8 and label == 1
    listed = "::".join(str(tmp_path / "s" / f"train-{k:06d}.tar") for k in range(3))
    for spec in (listed, str(tmp_path / "s")):
        other = build_dataset("webdataset", spec, "train", image_size=16)
        assert [other.read(i) for i in range(12)] == [ds.read(i) for i in range(12)]
    (tmp_path / "s" / "classes.txt").write_text("cat\ndog\nfox\n")
    named = build_dataset("webdataset", pattern, "train", image_size=16, subset=6, seed=1)
    assert named.classes == ["cat", "dog", "fox"] and sorted(named.labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_webdataset_fields_formats_and_unlabelled_samples(tmp_path):
    """TarWriter samples with png / webp / JPEG under upper-case names, extra fields and no
    class: each item is its sample's image, label -1."""
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (10, 200, 30)).save(buf, "WEBP")
    with wds.TarWriter(str(tmp_path / "mixed.tar")) as sink:
        sink.write({"__key__": "a", "png": photo_bytes(1, "PNG"), "json": {"x": 1}})
        sink.write({"__key__": "b", "webp": buf.getvalue(), "txt": "hello"})
        sink.write({"__key__": "c", "JPEG": photo_bytes(3)})
    ds = build_dataset("webdataset", str(tmp_path / "mixed.tar"), "pretrain", image_size=16)
    assert [ds.read(i) for i in range(3)] == [photo_bytes(1, "PNG"), buf.getvalue(), photo_bytes(3)]
    assert ds.labels.tolist() == [-1, -1, -1] and ds.classes == []
    colour = ds[1][0].float().mean((1, 2))  # a uniform WebP decodes to its colour
    assert (colour - torch.tensor([10.0, 200.0, 30.0])).abs().max() < 4


def test_parquet_reads_the_hub_layout(tmp_path):
    """pyarrow-written files in the hub's split naming (row groups of 4): rows in file order,
    bytes unchanged, class names from the ClassLabel metadata; the validation files for the
    test split; a data/ folder, a glob and a file name; other column names; binary images
    and images by path."""
    root = _parquet_folder(tmp_path / "hub")
    ds = build_dataset("parquet", str(root), "train", image_size=16)
    assert len(ds) == 15 and [ds.read(i) for i in range(15)] == [photo_bytes(k) for k in range(15)]
    assert ds.labels.tolist() == [k % 3 for k in range(15)] and ds.classes == ["a", "b", "c"]
    test = build_dataset("parquet", str(root), "test", image_size=16)
    assert [test.read(i) for i in range(6)] == [photo_bytes(k) for k in range(100, 106)]
    assert test[5][0].shape == (3, 18, 18)
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    for f in root.iterdir():
        (repo / "data" / f.name).write_bytes(f.read_bytes())
    for spec in (repo, root / "train-*.parquet"):
        assert build_dataset("parquet", str(spec), "train").labels.tolist() == ds.labels.tolist()
    one = write_parquet(tmp_path / "pics.parquet", 0, 3, image_column="img", labelled=False)
    plain = build_dataset("parquet", str(one), "pretrain", image_column="img")
    assert plain.labels.tolist() == [-1, -1, -1] and plain.read(2) == photo_bytes(2)
    Image.open(io.BytesIO(photo_bytes(7))).save(tmp_path / "seven.png")
    table = pa.table({"image": pa.array([photo_bytes(5), None], pa.binary()),
                      "y": pa.array([1, None], pa.int64())})
    pq.write_table(table, tmp_path / "bin.parquet")
    binary = build_dataset("parquet", str(tmp_path / "bin.parquet"), "pretrain", label_column="y")
    assert binary.read(0) == photo_bytes(5) and binary.labels.tolist() == [1, -1]
    struct = pa.array([{"bytes": None, "path": "seven.png"}],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": struct}), tmp_path / "bypath.parquet")
    bypath = build_dataset("parquet", str(tmp_path / "bypath.parquet"), "pretrain")
    assert bypath.read(0) == (tmp_path / "seven.png").read_bytes()


def test_files_of_the_datasets_library(tmp_path):
    """Files the datasets library writes: to_parquet, Dataset.save_to_disk (Arrow) and a
    DatasetDict.save_to_disk folder with its train and validation splits."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["cat", "dog"])})

    def make(first: int, n: int):
        return datasets.Dataset.from_dict(
            {"image": [{"bytes": photo_bytes(k), "path": None} for k in range(first, first + n)],
             "label": [k % 2 for k in range(first, first + n)]}, features=features)

    train, val = make(0, 7), make(50, 3)
    train.to_parquet(str(tmp_path / "t.parquet"))
    train.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(tmp_path / "dd"))
    for spec in ("t.parquet", "saved", "dd"):
        ds = build_dataset("parquet", str(tmp_path / spec), "train")
        assert [ds.read(i) for i in range(7)] == [photo_bytes(k) for k in range(7)], spec
        assert ds.labels.tolist() == [k % 2 for k in range(7)] and ds.classes == ["cat", "dog"]
    test = build_dataset("parquet", str(tmp_path / "dd"), "test")
    assert [test.read(i) for i in range(3)] == [photo_bytes(k) for k in range(50, 53)]
    saved_val = build_dataset("parquet", str(tmp_path / "saved"), "test",
                              val_root=str(tmp_path / "dd" / "validation"))
    assert len(saved_val) == 3


def test_pipe_shards_are_staged_once_into_the_cache(tmp_path, monkeypatch):
    """`pipe:` shards (object stores) are copied whole into $SSLKIT_SHARD_CACHE once: the same
    items as the local shards, and a second build runs no command; a failing command is one
    line naming it."""
    write_wds(tmp_path / "s", n=12, per_shard=5)
    monkeypatch.setenv("SSLKIT_SHARD_CACHE", str(tmp_path / "cache"))
    log = tmp_path / "ran.log"
    url = f"pipe:cat {tmp_path}/s/train-{{000000..000002}}.tar; echo x >> {log}"
    local = build_dataset("webdataset", str(tmp_path / "s"), "train")
    piped = build_dataset("webdataset", url, "train")
    assert [piped.read(i) for i in range(12)] == [local.read(i) for i in range(12)]
    assert len(list((tmp_path / "cache").iterdir())) == 3 and len(log.read_text().split()) == 3
    build_dataset("webdataset", url, "train")
    assert len(log.read_text().split()) == 3
    with pytest.raises(DataError, match=r"cannot stage the remote shard 'pipe:exit 3'"):
        build_dataset("webdataset", "pipe:exit 3", "train")
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]


def test_mid_epoch_start_is_the_tail_of_the_epoch_with_workers(tmp_path):
    """Random access: with 2 workers the views of a mid-epoch start are the tail of the
    whole epoch's, and equal those of 0 workers (what an exact resume rests on)."""
    for name, root in (("webdataset", write_wds(tmp_path / "s", n=12, per_shard=5)),
                       ("parquet", str(_parquet_folder(tmp_path / "p", n=12)))):
        ds = TwoCropDataset(build_dataset(name, root, "pretrain"), SPEC)

        def epoch(workers: int, start: int = 0):
            sampler = TrainSampler(len(ds), seed=3)
            sampler.set_epoch(1)
            sampler.set_start(start, 3)
            loader = build_loader(ds, 3, train=True, sampler=SeededSampler(sampler, 3),
                                  num_workers=workers)
            return [v1 for (v1, _), _ in loader]

        whole, tail = epoch(2), epoch(0, start=2)
        assert len(whole) == 4 and all(torch.equal(a, b) for a, b in zip(whole, epoch(0)))
        assert all(torch.equal(a, b) for a, b in zip(whole[2:], tail)), name


def test_device_decode_path_reads_shards(tmp_path):
    """data.decode_device=cuda's path (the workers read bytes, the batch is decoded and cut on
    the device), run on the CPU: the same boxes and nearly the same views as the PIL path;
    an undecodable image is named by its shard and member."""
    from sslkit.data.crops import EncodedTwoCropDataset, decode_views, sample_seed

    base = build_dataset("webdataset", write_wds(tmp_path / "s", n=6, per_shard=5), "train")
    enc, cpu = EncodedTwoCropDataset(base, SPEC), TwoCropDataset(base, SPEC)
    keys = [(i, sample_seed(0, 0, i)) for i in range(6)]
    batch = enc.collate([enc.load(k)[0] for k in keys])
    assert batch.names[5].endswith("train-000001.tar:000005.jpg")
    (d1, d2), fallbacks, _ = decode_views(batch, 16, torch.device("cpu"), source="webdataset")
    r1, r2 = cpu.collate([cpu.load(k)[0] for k in keys])
    assert fallbacks == 0 and (d1.float() - r1.float()).abs().mean() < 3.0
    batch.data[0] = torch.frombuffer(bytearray(b"\xff\xd8\xff" + b"\x00" * 64), dtype=torch.uint8)
    with pytest.raises(DataError, match=r"webdataset: cannot decode image '.*000000.tar:000000.jpg'"):
        decode_views(batch, 16, torch.device("cpu"), source="webdataset")


def test_a_new_source_of_encoded_images_takes_the_whole_input_path(tmp_path):
    """A source is its registration plus an EncodedImages (length, read, where, subset): the
    pretraining input, its crops of the whole image and the preview take it unchanged."""
    from sslkit.data import SOURCES, DatasetInfo, EncodedImages, register_dataset
    from sslkit.methods import resolved
    from sslkit.views.pipeline import build_pretrain_input

    class InMemoryFiles(EncodedImages):
        def __init__(self, blobs, labels):
            super().__init__("toy_files", labels, ["x", "y"], load_size=18)
            self.blobs = blobs

        def __len__(self):
            return len(self.blobs)

        def read(self, i):
            return self.blobs[i]

        def where(self, i):
            return f"blob {i}"

        def subset(self, indices):
            return InMemoryFiles([self.blobs[int(i)] for i in indices], self.labels[indices])

    @register_dataset("toy_files", DatasetInfo(None, 3, None, (0.5,) * 3, (0.25,) * 3,
                                               yields="files"))
    def _toy(req):
        return InMemoryFiles([photo_bytes(k) for k in range(8)], [k % 2 for k in range(8)])

    try:
        cfg = resolved(config.build({}, ["data.name=toy_files", "data.image_size=16",
                                         "data.num_workers=0", "train.batch_size=4",
                                         "method.queue_size=8", "method.bn_splits=1"]))
        pipe = build_pretrain_input(cfg, torch.device("cpu"))
        (views, labels) = next(iter(pipe.loader))
        v1, v2 = pipe.to_views(views)
        assert v1.shape == v2.shape == (4, 3, 16, 16) and labels.tolist() != []
        originals, p1, _ = pipe.preview([0, 1])
        assert originals.shape == p1.shape == (2, 3, 16, 16)
    finally:
        SOURCES.pop("toy_files", None)


# --------------------------------------------------------------------------- errors
def _truncated(tmp_path: Path) -> str:
    write_wds(tmp_path / "s", n=12, per_shard=5)
    shard = tmp_path / "s" / "train-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    return str(shard)


def test_errors_name_the_file_and_the_fix(tmp_path):
    write_wds(tmp_path / "s", n=12, per_shard=5)
    cases = [
        ("webdataset", str(tmp_path / "nope-{000000..000003}.tar"),
         r"no file matches data.root '.*nope-\{000000..000003\}.tar'"),
        ("webdataset", str(tmp_path / "s" / "train-{000000..000004}.tar"),
         r"2 of the 5 files of .* do not exist \(e.g. '.*train-000003.tar'\)"),
        ("parquet", str(tmp_path / "nothing"), r"no file matches data.root"),
    ]
    for name, root, pattern in cases:
        with pytest.raises(DataError, match=pattern):
            build_dataset(name, root, "train")
    shard = _truncated(tmp_path / "t")
    with pytest.raises(DataError, match=rf"shard '{shard}' is truncated or corrupt after "
                                        r"member '0000\d\d\.(jpg|cls)'"):
        build_dataset("webdataset", shard, "train")
    gz = tmp_path / "z.tar.gz"
    gz.write_bytes(b"\x1f\x8b" + b"\x00" * 100)
    with pytest.raises(DataError, match="is compressed"):
        build_dataset("webdataset", str(gz), "train")
    with wds.TarWriter(str(tmp_path / "noimg.tar")) as sink:
        sink.write({"__key__": "k1", "jpg": photo_bytes(1), "cls": 0})
        sink.write({"__key__": "k2", "txt": "a caption", "cls": 1})
    with pytest.raises(DataError, match=r"sample 'k2' of shard '.*noimg.tar' has no image "
                                        r"field \(jpg, jpeg, png, webp\); its fields are cls, txt"):
        build_dataset("webdataset", str(tmp_path / "noimg.tar"), "train")
    write_parquet(tmp_path / "cols.parquet", 0, 2, image_column="picture")
    with pytest.raises(DataError, match=r"has no column 'image' \(data.image_column\); its "
                                        r"columns are picture, label"):
        build_dataset("parquet", str(tmp_path / "cols.parquet"), "train")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"cannot read '.*bad.parquet'"):
        build_dataset("parquet", str(tmp_path / "bad.parquet"), "train")
    with pytest.raises(DataError, match="set data.val_root"):
        build_dataset("webdataset", str(tmp_path / "s" / "train-000000.tar"), "test")


def test_undecodable_image_in_a_shard_one_line_or_skipped(tmp_path):
    with wds.TarWriter(str(tmp_path / "bad.tar")) as sink:
        for s in samples(4):
            sink.write(s if s["__key__"] != "000002" else {**s, "jpg": b"not an image"})
    for name, root in (("webdataset", tmp_path / "bad.tar"),):
        base = build_dataset(name, str(root), "train")
        with pytest.raises(DataError, match=r"cannot decode image '.*bad.tar:000002.jpg'.*"
                                            r"skip_corrupt"):
            TwoCropDataset(base, SPEC).load((2, 1))
        skipping = build_dataset(name, str(root), "train", skip_corrupt=True)
        views, label, skipped = TwoCropDataset(skipping, SPEC).load((2, 1))
        assert skipped == [f"{root}:000002.jpg"] and label == 0  # the next sample's (key 3)


# --------------------------------------------------------------------------- the writer
@pytest.mark.parametrize("fmt", ["webdataset", "parquet"])
def test_writer_round_trip_byte_for_byte(tmp_path, fmt):
    """An image folder (JPEGs, a PNG, a BMP) written and read back: the same bytes (the BMP
    re-encoded as PNG, the same pixels), labels in ImageFolder's order, the class names
    beside them, the evaluation split; the libraries read the files too."""
    from sslkit.data.shards import main

    root = jpeg_folder(tmp_path / "imgs")
    Image.fromarray(np.full((9, 7, 3), 40, np.uint8)).save(root / "train" / "b" / "p.png")
    Image.fromarray(np.full((9, 7, 3), 90, np.uint8)).save(root / "train" / "a" / "z.bmp")
    assert main([str(root), str(tmp_path / "out"), "--format", fmt, "--shard-size", "3"]) == 0
    src = build_dataset("imagefolder", str(root), "train")
    back = build_dataset(fmt, str(tmp_path / "out"), "train")
    assert back.classes == src.classes == ["a", "b"] and torch.equal(back.labels, src.labels)
    for i, (path, _) in enumerate(src.samples):
        if path.endswith(".bmp"):
            assert torch.equal(back.decode(back.read(i)), src.decode(src.read(i)))
        else:
            assert back.read(i) == Path(path).read_bytes(), path
    assert (tmp_path / "out" / "classes.txt").read_text() == "a\nb\n"
    assert len(build_dataset(fmt, str(tmp_path / "out"), "test")) == 6
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    if fmt == "webdataset":
        assert files[-2:] == ["val-000000.tar", "val-000001.tar"] and len(files) == 6
        streamed = list(wds.WebDataset(str(tmp_path / "out" / "train-{000000..000002}.tar"),
                                       shardshuffle=False))
        assert [int(s["cls"]) for s in streamed] == src.labels.tolist()
    else:
        assert files[1:4] == [f"train-0000{k}-of-00003.parquet" for k in range(3)]
        meta = json.loads(pq.read_schema(tmp_path / "out" / files[1]).metadata[b"huggingface"])
        assert meta["info"]["features"]["label"] == {"names": ["a", "b"], "_type": "ClassLabel"}


def test_writer_refuses_a_used_out_and_leaves_nothing_on_an_error(tmp_path, monkeypatch):
    from sslkit.data import shards

    root = jpeg_folder(tmp_path / "imgs")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    proc = run_cli("-m", "sslkit.data.shards", str(root), str(tmp_path / "used"),
                   "--format", "webdataset")
    assert_one_line_error(proc, "is not empty")
    assert os.listdir(tmp_path / "used") == ["keep.txt"]
    real = shards.Items.__iter__

    def failing(self):
        for k, item in enumerate(real(self)):
            if k == 4:
                raise DataError("cannot read image 'x.jpg' (OSError: gone)")
            yield item
    monkeypatch.setattr(shards.Items, "__iter__", failing)
    for fmt in ("webdataset", "parquet"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert shards.main([str(root), str(tmp_path / "empty"), "--format", fmt]) == 2
        assert sorted(os.listdir(tmp_path)) == ["empty", "imgs", "used"]
        assert os.listdir(tmp_path / "empty") == []


# --------------------------------------------------------------------------- torchrun split
def _coverage_worker(rank: int, world: int, init_file: str, roots: dict, out: str) -> None:
    import torch.distributed as tdist

    from sslkit.methods import resolved
    from sslkit.views.pipeline import build_pretrain_input

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                             world_size=world)
    torch.set_num_threads(1)
    seen = {}
    for name, root in roots.items():
        cfg = resolved(config.build({}, [f"data.name={name}", f"data.root={root}",
                                         "data.image_size=16", "data.num_workers=0",
                                         "train.batch_size=10", "method.queue_size=20",
                                         "method.bn_splits=1"]))
        pipe = build_pretrain_input(cfg, torch.device("cpu"), rank, world, local_batch=5)
        for epoch in (0, 1):
            pipe.sampler.set_epoch(epoch)  # as the engine does
            seen[(name, epoch)] = [y for _, labels in pipe.loader for y in labels.tolist()]
    gathered = [None] * world
    tdist.all_gather_object(gathered, seen)
    if rank == 0:
        torch.save(gathered, os.path.join(out, "seen.pt"))
    tdist.barrier()
    tdist.destroy_process_group()


def test_two_processes_see_every_sample_once_per_epoch(tmp_path):
    """Two gloo processes, 30 samples in 3 shards / 3 Parquet files (not a multiple of the
    ranks), the class index = the sample's number: each epoch every sample exactly once over
    both ranks, the ranks disjoint, another order the next epoch."""
    import torch.multiprocessing as mp

    (tmp_path / "s").mkdir()
    with wds.ShardWriter(str(tmp_path / "s" / "train-%06d.tar"), maxcount=10, verbose=0) as sink:
        for k in range(30):
            sink.write({"__key__": f"{k:06d}", "jpg": photo_bytes(k), "cls": k})
    for k in range(3):
        write_parquet(tmp_path / "p" / f"train-{k:05d}-of-00003.parquet", 10 * k, 10,
                      classes=10 ** 6)  # label = the sample's number
    roots = {"webdataset": str(tmp_path / "s" / "train-{000000..000002}.tar"),
             "parquet": str(tmp_path / "p")}
    mp.spawn(_coverage_worker, args=(2, str(tmp_path / "init"), roots, str(tmp_path)), nprocs=2)
    ranks = torch.load(tmp_path / "seen.pt", weights_only=False)
    for key in ranks[0]:
        r0, r1 = ranks[0][key], ranks[1][key]
        assert len(r0) == len(r1) == 15 and not set(r0) & set(r1), key
        assert sorted(r0 + r1) == list(range(30)), key
    for name in roots:
        assert ranks[0][(name, 0)] != ranks[0][(name, 1)]
    assert ranks[0][("webdataset", 0)] == ranks[0][("parquet", 0)]  # the same seeded order


# --------------------------------------------------------------------------- end to end
def _shard_sets(tmp_path: Path, name: str) -> list[str]:
    if name == "webdataset":
        train = write_wds(tmp_path / "data", n=32, per_shard=10)
        with wds.ShardWriter(str(tmp_path / "data" / "val-%06d.tar"), maxcount=10,
                             verbose=0) as sink:
            for k in range(100, 112):
                sink.write({"__key__": f"{k:06d}", "jpg": photo_bytes(k), "cls": k % 3})
        return ["data.name=webdataset", f"data.root={train}",
                f"data.val_root={tmp_path / 'data' / 'val-{000000..000001}.tar'}"]
    return ["data.name=parquet", f"data.root={_parquet_folder(tmp_path / 'data', n=32, per_file=10)}"]


def _pretrain_argv(tmp_path: Path, name: str, out: Path, extra=()) -> list[str]:
    items = tiny_overrides(out, epochs=2, extra=[
        *_shard_sets(tmp_path, name), "train.batch_size=8", "method.queue_size=16",
        "data.num_workers=1", "run.tensorboard=false", *extra])
    return [a for it in items for a in ("--set", it)]


@pytest.mark.parametrize("name", ["webdataset", "parquet"])
def test_pretrain_and_evaluate_from_shards(tmp_path, name):
    """The whole path from shards: pretraining (crops of the whole image in a loader worker,
    the online kNN on the val split; long_tail with subset on the shards, and the online
    probe on Parquet), the preview, then run_lincls (kNN and the linear probe)."""
    extra = (["data.long_tail=2", "data.subset=0.8"] if name == "webdataset"
             else ["eval.online_probe=true"])
    out = tmp_path / "run"
    proc = run_cli("run_pretrain.py", *_pretrain_argv(tmp_path, name, out, extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("knn_top1" in ln for ln in lines)
    if name == "parquet":
        assert any("probe_test_top1" in ln for ln in lines)
        return
    preview = run_cli("-m", "sslkit.preview", "--config", str(out / "config.yaml"), "--n", "3",
                      "--out", str(tmp_path / "grid.png"))
    assert preview.returncode == 0, preview.stderr[-2000:]
    assert Image.open(tmp_path / "grid.png").size[0] > 0
    proc = run_cli("run_lincls.py", "--checkpoint", str(out / "checkpoints" / "last.pt"),
                   "--set", "eval.epochs=1", "eval.lr_grid=[0.1]", "eval.wd_grid=[0.0]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "eval.json").read_text())
    assert 0 <= result["knn_top1"] <= 100 and 0 <= result["linear_top1"] <= 100


def test_an_error_inside_a_step_ends_the_run_and_its_loader_workers(tmp_path):
    """An exception raised inside a training step (here torch's: the stem's max-pool leaves
    one position a side at the last stage, one image per split-BN group) ends the run with
    its traceback, at once: the loader's workers ignore SIGTERM, so a run that left them to
    the exit would wait for them forever."""
    out = tmp_path / "run"
    proc = run_cli("run_pretrain.py", *_pretrain_argv(tmp_path, "webdataset", out,
                                                      ["model.maxpool=true"]), timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Expected more than 1 value per channel" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["webdataset", "parquet"])
def test_kill_9_then_resume_equals_the_uninterrupted_run(tmp_path, name):
    """kill -9 at random moments of a run reading shards (a checkpoint every step), then
    --resume: the final weights equal the uninterrupted run's, bit for bit."""
    extra = ["train.checkpoint_every_steps=1", "eval.knn_every=0"]
    cmd = lambda out, resume=False: [  # noqa: E731
        sys.executable, str(ROOT / "run_pretrain.py"), *(["--resume"] if resume else []),
        *_pretrain_argv(tmp_path / out, name, tmp_path / out / "run", [*extra, "train.epochs=3"])]
    ref = subprocess.run(cmd("ref"), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out, rng, kills = tmp_path / "killed" / "run", random.Random(7), 0
    for attempt in range(6):
        p = subprocess.Popen(cmd("killed", resume=attempt > 0), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.time() + 120
            while time.time() < deadline and p.poll() is None and not (
                    (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.8))
            if p.poll() is not None:
                break
            os.killpg(p.pid, signal.SIGKILL)
            kills += 1
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if kills >= 2:
            break
    assert kills >= 1, "the run finished before it could be killed"
    done = subprocess.run(cmd("killed", resume=True), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_checkpoint(tmp_path / "ref" / "run" / "checkpoints" / "last.pt")
    b = load_checkpoint(out / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 12  # 32 images / 8 = 4 steps x 3 epochs
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
