"""Datasets (real on-disk formats written into tmp_path), subsets, sampler and loaders."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sslkit import config as config_mod
from sslkit import data
from sslkit.data import (TrainSampler, build_dataset, build_loader, dataset_from_config,
                         dataset_info, stratified_subset)
from sslkit.errors import ConfigError, DataError


# --------------------------------------------------------------------------- writers
def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """MNIST idx: 0, 0, 0x08 (uint8), ndim, big-endian int32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def fake_fmnist(root: Path, n_train: int = 12, n_test: int = 5, gz_train: bool = True):
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n, gz in (("train", n_train, gz_train), ("t10k", n_test, not gz_train)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        raw = root / "FashionMNIST" / "raw"
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
        out[prefix] = (images, labels)
    return out


@pytest.fixture
def no_debian(monkeypatch, tmp_path):
    monkeypatch.setattr(data.readers, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-debian"))


def fake_cifar(root: Path, hundred: bool, n: int = 4):
    """torchvision's CIFAR pickles: dicts with 'data' (N, 3072: R, G, B planes) and labels."""
    rng = np.random.default_rng(1)
    if hundred:
        folder, files, key, meta = root / "cifar-100-python", ["train", "test"], "fine_labels", \
            ("meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    else:
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        key, meta = "labels", ("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    folder.mkdir(parents=True)
    written = {}
    for k, name in enumerate(files):
        flat = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(k + i) % (100 if hundred else 10) for i in range(n)]
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": flat, key: labels}, fh)
        written[name] = (flat, labels)
    with open(folder / meta[0], "wb") as fh:
        pickle.dump(meta[1], fh)
    return written


def fake_stl10(root: Path, n_train=3, n_test=2, n_unlabeled=4):
    """STL-10 binaries: *_X.bin uint8 with each channel column-major; *_y.bin labels 1..10."""
    rng = np.random.default_rng(2)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for part, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        x = rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)  # (N, C, row, col)
        # column-major within a channel: all rows of column 0 first, i.e. the (N, C, col, row) array
        (folder / f"{part}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        if part != "unlabeled":
            y = (np.arange(n) % 10 + 1).astype(np.uint8)
            (folder / f"{part}_y.bin").write_bytes(y.tobytes())
        out[part] = x
    return out


def make_image_folder(root: Path, corrupt: bool = True) -> dict[str, Path]:
    from PIL import Image

    rng = np.random.default_rng(3)
    paths = {}
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            rgb = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), "RGB")
            rgb.save(d / "rgb.png")
            paths[f"{split}/{cls}/rgb"] = d / "rgb.png"
    gray = Image.fromarray(rng.integers(0, 256, (50, 30), dtype=np.uint8), "L")
    gray.save(root / "train" / "cat" / "gray.png")
    rgba = Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8), "RGBA")
    rgba.save(root / "train" / "dog" / "rgba.png")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")  # ignored: extension
    paths["gray"], paths["rgba"] = root / "train" / "cat" / "gray.png", root / "train" / "dog" / "rgba.png"
    if corrupt:
        bad = root / "train" / "dog" / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
        paths["bad"] = bad
    return paths


# --------------------------------------------------------------------------- Fashion-MNIST
def test_idx_gz_and_raw_fashion_mnist(tmp_path, no_debian):
    written = fake_fmnist(tmp_path)  # train gz, test raw
    tr = build_dataset("fashion_mnist", str(tmp_path), "train", channels=1)
    assert tr.images.shape == (12, 1, 28, 28) and tr.images.dtype == torch.uint8
    assert torch.equal(tr.images[:, 0], torch.from_numpy(written["train"][0]))
    assert tr.labels.tolist() == written["train"][1].tolist() and tr.labels.dtype == torch.int64
    te = build_dataset("fashion_mnist", str(tmp_path), "test", channels=3)
    assert te.images.shape == (5, 3, 28, 28)
    for c in range(3):
        assert torch.equal(te.images[:, c], torch.from_numpy(written["t10k"][0]))
    image, label = te[4]
    assert image.shape == (3, 28, 28) and isinstance(label, int) and label == 4
    assert tr.num_classes == 10 and len(build_dataset("fashion_mnist", str(tmp_path), "pretrain")) == 12


def test_idx_bad_header_is_data_error(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # type 0x0d = float, not uint8
    with pytest.raises(DataError, match="x-idx3-ubyte"):
        data.read_idx(str(p))
    write_idx(tmp_path / "short", np.zeros((2, 3), np.uint8), gz=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated|header says"):
        data.read_idx(str(tmp_path / "short"))


def test_fashion_mnist_missing_message(tmp_path, no_debian):
    with pytest.raises(DataError) as e:
        build_dataset("fashion_mnist", str(tmp_path / "data"), "train")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("fashion_mnist")
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in msg
    assert "no-debian" in msg and "data.download=true" in msg and "dataset-fashion-mnist" in msg


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist(tmp_path):
    tr = build_dataset("fashion_mnist", str(tmp_path), "train", channels=1)
    te = build_dataset("fashion_mnist", str(tmp_path), "test", channels=1)
    assert tr.images.shape == (60000, 1, 28, 28) and te.images.shape == (10000, 1, 28, 28)
    assert tr.labels.min() == 0 and tr.labels.max() == 9
    assert torch.equal(torch.bincount(tr.labels), torch.full((10,), 6000))


# --------------------------------------------------------------------------- CIFAR / STL-10
@pytest.fixture
def no_md5(monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_pickles(tmp_path, no_md5, hundred):
    name = "cifar100" if hundred else "cifar10"
    written = fake_cifar(tmp_path, hundred)
    tr = build_dataset(name, str(tmp_path), "train")
    te = build_dataset(name, str(tmp_path), "test")
    train_files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    flat = np.concatenate([written[f][0] for f in train_files])
    labels = sum((written[f][1] for f in train_files), [])
    # the pickle row holds the R plane, then G, then B, each row-major 32x32
    assert torch.equal(tr.images, torch.from_numpy(flat.reshape(-1, 3, 32, 32)))
    assert tr.labels.tolist() == labels and tr.num_classes == (100 if hundred else 10)
    assert te.images.shape == (4, 3, 32, 32)
    gray = build_dataset(name, str(tmp_path), "test", channels=1)
    test_flat = written["test" if hundred else "test_batch"][0].reshape(-1, 3, 32, 32).astype(np.float64)
    luma = np.round(0.299 * test_flat[:, 0] + 0.587 * test_flat[:, 1] + 0.114 * test_flat[:, 2])
    assert gray.images.shape == (4, 1, 32, 32)
    assert np.abs(gray.images[:, 0].numpy().astype(np.int64) - luma).max() <= 1


def test_cifar_missing_message(tmp_path):
    with pytest.raises(DataError) as e:
        build_dataset("cifar10", str(tmp_path), "train")
    msg = str(e.value)
    assert msg.startswith("cifar10") and str(tmp_path / "cifar-10-batches-py") in msg
    assert "data.download=true" in msg


def test_stl10_binaries(tmp_path):
    x = fake_stl10(tmp_path)
    tr = build_dataset("stl10", str(tmp_path), "train")
    assert torch.equal(tr.images, torch.from_numpy(x["train"]))
    assert tr.labels.tolist() == [0, 1, 2]  # file labels 1..10 -> 0..9
    te = build_dataset("stl10", str(tmp_path), "test")
    assert torch.equal(te.images, torch.from_numpy(x["test"]))
    pre = build_dataset("stl10", str(tmp_path), "pretrain")
    assert pre.images.shape == (7, 3, 96, 96)
    assert torch.equal(pre.images[3:], torch.from_numpy(x["unlabeled"]))
    assert pre.labels.tolist() == [0, 1, 2, -1, -1, -1, -1]


def test_stl10_missing_and_bad_size(tmp_path):
    with pytest.raises(DataError, match=r"stl10: data not found.*unlabeled_X\.bin.*data\.download=true"):
        build_dataset("stl10", str(tmp_path), "pretrain")
    fake_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "test_X.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="test_X.bin"):
        build_dataset("stl10", str(tmp_path), "test")


# --------------------------------------------------------------------------- imagefolder
def test_imagefolder_modes_and_classes(tmp_path):
    paths = make_image_folder(tmp_path, corrupt=False)
    ds = build_dataset("imagefolder", str(tmp_path), "train", load_size=24)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2 and len(ds) == 4
    by_path = {p: i for i, (p, _) in enumerate(ds.samples)}
    for key in ("gray", "rgba", "train/cat/rgb"):
        image, label = ds[by_path[str(paths[key])]]
        assert image.shape == (3, 24, 24) and image.dtype == torch.uint8
    gray, _ = ds[by_path[str(paths["gray"])]]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # L -> RGB
    assert ds[by_path[str(paths["rgba"])]][1] == 1
    val = build_dataset("imagefolder", str(tmp_path), "test", image_size=16)
    assert val.load_size == round(16 * 256 / 224) and len(val) == 2
    one = build_dataset("imagefolder", str(tmp_path), "train", load_size=20, channels=1)
    assert one[0][0].shape == (1, 20, 20)


def test_imagefolder_resize_keeps_centre_square(tmp_path):
    from PIL import Image

    # 20x40 (h x w) image: left quarter black, middle half white, right quarter black.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 10:30] = 255
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "train" / "a" / "x.png")
    img, _ = build_dataset("imagefolder", str(tmp_path), "train", load_size=20)[0]
    assert img.shape == (3, 20, 20) and int(img.min()) == 255  # the centre square is all white


def test_imagefolder_corrupt_file_error_and_skip(tmp_path):
    paths = make_image_folder(tmp_path)
    ds = build_dataset("imagefolder", str(tmp_path), "train", load_size=16)
    idx = [p for p, _ in ds.samples].index(str(paths["bad"]))
    with pytest.raises(DataError, match="broken.jpg.*skip_corrupt"):
        ds[idx]
    for workers in (0, 1):  # in-process and in a worker: the main process gets a DataError
        loader = build_loader(ds, 5, train=False, num_workers=workers)
        with pytest.raises(DataError, match="broken.jpg"):
            list(loader)
    ds = build_dataset("imagefolder", str(tmp_path), "train", load_size=16, skip_corrupt=True)
    loader = build_loader(ds, 2, train=False, num_workers=1)
    batches = list(loader)
    assert sum(b[0].shape[0] for b in batches) == len(ds) == 5
    assert all(b[0].dtype == torch.uint8 and b[0].shape[1:] == (3, 16, 16) for b in batches)
    assert loader.skipped == {str(paths["bad"])}


def test_imagefolder_empty_and_missing(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images.*train/<class>"):
        build_dataset("imagefolder", str(tmp_path), "train")
    with pytest.raises(DataError, match=r"has no val/ folder.*kNN and the linear probe"):
        build_dataset("imagefolder", str(tmp_path), "test")
    # a missing root and a missing split are told apart, with every layout named
    with pytest.raises(DataError, match=r"data.root '.*nope' does not exist.*train/<class>.*"
                                        r"unlabelled photos"):
        build_dataset("imagefolder", str(tmp_path / "nope"), "train")


def test_imagefolder_class_list(tmp_path):
    make_image_folder(tmp_path, corrupt=False)
    good = tmp_path / "classes.txt"
    good.write_text("# ImageNet-100 style\ndog\n\n")
    ds = build_dataset("imagefolder", str(tmp_path), "train", class_list=str(good), load_size=8)
    assert ds.classes == ["dog"] and {lab for _, lab in ds.samples} == {0} and len(ds) == 2
    (tmp_path / "outside").mkdir()
    for entry in ("../outside", "/etc", "cat/../../outside", ".."):
        bad = tmp_path / "bad.txt"
        bad.write_text(f"cat\n{entry}\n")
        with pytest.raises(DataError, match="line 2.*not a plain class folder name"):
            build_dataset("imagefolder", str(tmp_path), "train", class_list=str(bad))
    (tmp_path / "ghost.txt").write_text("ghost\n")
    with pytest.raises(DataError, match="ghost"):
        build_dataset("imagefolder", str(tmp_path), "train", class_list=str(tmp_path / "ghost.txt"))


# --------------------------------------------------------------------------- synthetic
def knn_accuracy(xtr, ytr, xte, yte, k=20):
    a = xtr.float().flatten(1)
    b = xte.float().flatten(1)
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    top = (b @ a.T).topk(k, dim=1).indices
    votes = torch.nn.functional.one_hot(ytr[top], int(ytr.max()) + 1).sum(1)
    return (votes.argmax(1) == yte).float().mean().item()


def test_synthetic_deterministic_with_class_structure():
    a = build_dataset("synthetic", "unused", "train", synthetic_train=600, synthetic_test=200)
    b = build_dataset("synthetic", "unused", "train", synthetic_train=600, synthetic_test=200)
    te = build_dataset("synthetic", "unused", "test", synthetic_train=600, synthetic_test=200)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (600, 3, 32, 32) and te.images.shape == (200, 3, 32, 32)
    assert not torch.equal(a.images[:200], te.images)
    assert torch.equal(torch.bincount(a.labels), torch.full((10,), 60))
    acc = knn_accuracy(a.images, a.labels, te.images, te.labels)
    assert 0.3 < acc < 0.97, acc  # chance is 0.1: clear structure, but not trivial
    big = build_dataset("synthetic", "unused", "train", image_size=48, synthetic_train=20,
                        synthetic_classes=4, channels=1)
    assert big.images.shape == (20, 1, 48, 48) and big.num_classes == 4


# --------------------------------------------------------------------------- subset
def test_stratified_subset_count_fraction_seed():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = stratified_subset(labels, 10, seed=0)
    assert idx.shape == (10,) and torch.equal(idx, torch.sort(idx).values)
    assert torch.bincount(labels[idx]).tolist() == [5, 3, 2]
    frac = stratified_subset(labels, 0.5, seed=0)
    assert torch.bincount(labels[frac]).tolist() == [25, 15, 10]
    assert torch.equal(stratified_subset(labels, 10, seed=0), idx)
    assert not torch.equal(stratified_subset(labels, 10, seed=1), idx)
    assert len(set(stratified_subset(labels, 100, seed=3).tolist())) == 100
    with pytest.raises(DataError, match="only 100"):
        stratified_subset(labels, 101)


def test_subset_applies_to_dataset(tmp_path):
    ds = build_dataset("synthetic", "", "train", synthetic_train=100, subset=0.2, seed=5)
    assert len(ds) == 20 and torch.equal(torch.bincount(ds.labels), torch.full((10,), 2))
    full = build_dataset("synthetic", "", "train", synthetic_train=100)
    idx = stratified_subset(full.labels, 0.2, seed=5)
    assert torch.equal(ds.images, full.images[idx])


# --------------------------------------------------------------------------- sampler / loader
def test_train_sampler_is_a_pure_function_of_seed_and_epoch():
    a, b = TrainSampler(50, seed=3), TrainSampler(50, seed=3)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(TrainSampler(50, seed=0)) != list(TrainSampler(50, seed=1))
    c = TrainSampler(50, seed=0)
    c.set_epoch(1)
    d = TrainSampler(50, seed=1)  # (seed 0, epoch 1) must not equal (seed 1, epoch 0)
    assert list(c) != list(d)


def test_train_sampler_start_equals_slicing():
    s = TrainSampler(37, seed=1)
    s.set_epoch(4)
    full = list(s)
    s.set_start(3, 5)
    assert list(s) == full[15:] and len(s) == 37 - 15
    s.set_epoch(5)  # a new epoch starts from 0 again
    assert len(list(s)) == 37


@pytest.mark.parametrize("drop_last", [True, False])
def test_train_sampler_ranks_disjoint_and_covering(drop_last):
    n, world = 23, 4
    shards = []
    for r in range(world):
        s = TrainSampler(n, seed=7, rank=r, world_size=world, drop_last=drop_last)
        s.set_epoch(1)
        shards.append(list(s))
    sizes = {len(x) for x in shards}
    assert sizes == {n // world if drop_last else -(-n // world)}
    flat = [i for sh in shards for i in sh]
    if drop_last:
        assert len(set(flat)) == len(flat) == (n // world) * world  # disjoint
    else:
        assert set(flat) == set(range(n))  # covering (padded by wrapping)


def test_in_memory_loader_batches():
    ds = build_dataset("synthetic", "", "train", synthetic_train=50)
    train = build_loader(ds, 16, train=True, seed=0)
    batches = list(train)
    assert len(train) == len(batches) == 3  # 50 // 16, last partial dropped
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    seen = torch.cat([b[1] for b in batches])
    assert seen.shape == (48,)
    ev = build_loader(ds, 16, train=False)
    got = list(ev)
    assert len(ev) == len(got) == 4 and got[-1][0].shape[0] == 2
    assert torch.equal(torch.cat([b[0] for b in got]), ds.images)  # in order, nothing dropped
    sampler = TrainSampler(50, seed=9)
    sampler.set_epoch(1)
    sampler.set_start(1, 16)
    resumed = build_loader(ds, 16, train=True, sampler=sampler)
    order = TrainSampler(50, seed=9)
    order.set_epoch(1)
    expect = list(order)[16:48]
    out = list(resumed)
    assert len(resumed) == len(out) == 2
    assert torch.equal(torch.cat([b[0] for b in out]), ds.images[expect])


def test_worker_loader_batches(tmp_path):
    make_image_folder(tmp_path, corrupt=False)
    ds = build_dataset("imagefolder", str(tmp_path), "train", load_size=12)
    loader = build_loader(ds, 3, train=True, num_workers=0, seed=1)
    batches = list(loader)
    assert len(loader) == len(batches) == 1
    assert batches[0][0].shape == (3, 3, 12, 12) and batches[0][1].dtype == torch.int64


# --------------------------------------------------------------------------- config
def test_dataset_from_config_and_info(tmp_path):
    cfg = config_mod.build({"data": {"name": "synthetic", "synthetic_train": 40,
                                     "synthetic_test": 30, "subset": 20, "channels": 1}})
    tr = dataset_from_config(cfg.data, "pretrain", seed=0)
    te = dataset_from_config(cfg.data, "test", seed=0)
    assert len(tr) == 20 and len(te) == 30 and tr.images.shape[1] == 1
    assert dataset_info("cifar10").native_size == 32 and dataset_info("stl10").num_classes == 10
    assert dataset_info("imagefolder").num_classes is None
    assert data.normalization("fashion_mnist", 3)[0] == (0.2860,) * 3
    assert data.normalization("cifar10", 3, mean=[0.5])[0] == (0.5, 0.5, 0.5)


def test_fashion_mnist_offline_names_all_three_ways(tmp_path, no_debian, monkeypatch):
    """No local files, no Debian package, and the download fails (offline): one line that
    names the local folder, the Debian package and the download."""
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(data.readers.torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError) as e:
        build_dataset("fashion_mnist", str(tmp_path), "train", download=True)
    msg = str(e.value)
    assert "\n" not in msg and "download" in msg and "failed" in msg
    assert str(tmp_path / "FashionMNIST" / "raw") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "no-debian" in msg


def test_fashion_mnist_prefers_local_files_to_a_download(tmp_path, no_debian, monkeypatch):
    fake_fmnist(tmp_path)

    def no_network(*a, **k):
        raise AssertionError("downloaded although the files are there")

    monkeypatch.setattr(data.readers.torchvision.datasets, "FashionMNIST", no_network)
    ds = build_dataset("fashion_mnist", str(tmp_path), "train", download=True)
    assert len(ds) == 12


# --------------------------------------------------------------------------- long tail
def test_long_tail_profile_exact_counts():
    """CIFAR-10-LT and CIFAR-100-LT at r = 100 (Cao et al. 2019): the published class counts
    (5000, 2997, 1796, ..., 50: 12,406 images; CIFAR-100-LT: 10,847)."""
    from sslkit.data.datasets import long_tail_counts

    assert long_tail_counts([5000] * 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139,
                                                  83, 50]
    assert sum(long_tail_counts([500] * 100, 100)) == 10847
    assert long_tail_counts([5000] * 10, 10)[-1] == 500 and long_tail_counts([7, 3], 1) == [7, 3]


def test_long_tail_split_is_seeded_balanced_test_and_composes_with_subset():
    cfg = config_mod.build({}, ["data.name=synthetic", "data.synthetic_train=400",
                                "data.synthetic_test=100", "data.synthetic_classes=4",
                                "data.image_size=8", "data.long_tail=10"])
    pre = dataset_from_config(cfg.data, "pretrain", seed=3)
    train = dataset_from_config(cfg.data, "train", seed=3)
    test = dataset_from_config(cfg.data, "test", seed=3)
    counts = torch.bincount(pre.labels, minlength=4).tolist()
    assert counts == [100, 46, 21, 10]  # 100 x 10^(-i/3), floored
    assert torch.equal(pre.images, train.images)  # the probe trains on the pretraining set
    assert torch.bincount(test.labels).tolist() == [25, 25, 25, 25]  # the test stays whole
    again = dataset_from_config(cfg.data, "pretrain", seed=3)
    other = dataset_from_config(cfg.data, "pretrain", seed=4)
    assert torch.equal(pre.images, again.images) and not torch.equal(pre.images, other.images)
    half = config_mod.build({}, ["data.name=synthetic", "data.synthetic_train=400",
                                 "data.synthetic_classes=4", "data.image_size=8",
                                 "data.long_tail=10", "data.subset=0.5"])
    sub = dataset_from_config(half.data, "pretrain", seed=3)
    assert torch.bincount(sub.labels, minlength=4).tolist() == [50, 23, 10, 5]


def test_a_registered_dataset_is_a_data_name(tmp_path):
    """A new dataset is its loader plus the decorator that registers it with its facts:
    build_dataset, the config's data.name and its normalisation take it at once."""
    from sslkit.data import SOURCES, DatasetInfo, InMemoryDataset, register_dataset
    from sslkit.methods import resolved

    @register_dataset("toy_gray", DatasetInfo(3, 1, 8, (0.25,), (0.5,)))
    def _toy(req):
        images = torch.arange(6 * 64, dtype=torch.uint8).view(6, 1, 8, 8)
        return InMemoryDataset(images, torch.tensor([0, 1, 2, 0, 1, 2]), 3, "toy_gray", req.split)

    try:
        ds = build_dataset("toy_gray", str(tmp_path), "train", channels=1, subset=3)
        assert len(ds) == 3 and sorted(ds.labels.tolist()) == [0, 1, 2]
        cfg = resolved(config_mod.build({}, ["data.name=toy_gray", "data.channels=1",
                                         "data.image_size=8", f"run.output_dir={tmp_path}"]))
        assert cfg.data.mean == [0.25] and cfg.data.std == [0.5]
        with pytest.raises(ValueError, match="registered already"):
            register_dataset("toy_gray", DatasetInfo(3, 1, 8, (0.0,), (1.0,)))(lambda r: None)
    finally:
        SOURCES.pop("toy_gray", None)
    with pytest.raises(ConfigError, match="data.name=toy_gray is invalid: expected one of"):
        build_dataset("toy_gray", str(tmp_path), "train")
