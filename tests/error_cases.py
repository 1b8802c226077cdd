"""The table of bad inputs and their one-line errors (docs/errors.md is generated from it).

Each case builds its input inside a fresh directory and names the command line; the test
(tests/test_errors.py) runs it and checks: exit code 2, exactly one ``error: ...`` line on
stderr, no traceback, the expected fragments in the message, and no file on disk changed.
``python scripts/errors_table.py`` runs every case and rewrites docs/errors.md.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

TINY = ["run.device=cpu", "run.precision=fp32", "run.progress=false", "data.name=synthetic",
        "data.image_size=16", "data.synthetic_train=64", "data.synthetic_test=32",
        "data.num_workers=0", "model.width=4", "model.cifar_stem=true", "model.maxpool=false",
        "train.batch_size=16",
        "train.epochs=1", "method.queue_size=64", "eval.knn_every=0"]

VIT2 = ["model.backbone=vit_tiny", "model.vit_depth=2", "model.patch_size=8"]


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    family: str
    input: str                                   # what the user did (for the docs)
    build: Callable[[Path], list[str]]           # -> argv (after the script name)
    fragments: tuple[str, ...]                   # must appear in the error line
    script: str = "pretrain"                     # "pretrain", "lincls", "finetune", "export",
                                                 # "shards"
    needs_no_gpu: bool = False
    lazy: bool = False  # found while training (e.g. a corrupt image): the new run directory
                        # may have been started; files that existed before stay unchanged
    hide_modules: tuple[str, ...] = ()  # imported as if not installed (e.g. timm)


def _sets(tmp: Path, *items: str, out: str = "run") -> list[str]:
    argv = []
    for it in [f"run.output_dir={tmp / out}", *TINY, *items]:
        argv += ["--set", it]
    return argv


def _set(*items: str) -> Callable[[Path], list[str]]:
    return lambda tmp: _sets(tmp, *items)


def _file(text: str | bytes, *items: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        p = tmp / "bad.yaml"
        (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
        return ["--config", str(p), *_sets(tmp, *items)]
    return build


def _raw(*argv: str) -> Callable[[Path], list[str]]:
    return lambda tmp: [a.replace("{tmp}", str(tmp)) for a in argv]


# --------------------------------------------------------------------------- data builders
def _empty_folder(tmp: Path) -> list[str]:
    (tmp / "imgs" / "train" / "cat").mkdir(parents=True)
    (tmp / "imgs" / "val" / "cat").mkdir(parents=True)
    return _sets(tmp, "data.name=imagefolder", f"data.root={tmp / 'imgs'}")


def _no_val_folder(tmp: Path) -> list[str]:
    """A pretrained run on an image folder without val/: run_lincls needs the val split."""
    for i in range(4):
        _png(tmp / "imgs" / "train" / "a" / f"{i}.png", 40 * i)
    run = tiny_run(tmp)
    return ["--checkpoint", str(run / "checkpoints" / "last.pt"), "--set",
            "data.name=imagefolder", f"data.root={tmp / 'imgs'}", "data.image_size=16",
            "data.channels=3"]


def _png(path: Path, value: int = 128) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), (value, value, value)).save(path)


def _corrupt_image(tmp: Path) -> list[str]:
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for i in range(4):
                _png(tmp / "imgs" / split / cls / f"{i}.png", 40 * i)
    (tmp / "imgs" / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return _sets(tmp, "data.name=imagefolder", f"data.root={tmp / 'imgs'}",
                 "train.batch_size=8", "method.queue_size=64")


def _shards(tmp: Path, n: int = 12, bad: dict | None = None) -> str:
    """WebDataset shards (webdataset's ShardWriter, 5 samples each) under tmp/s; ``bad``
    replaces sample keys' dicts."""
    import webdataset as wds  # optional extra (in .[dev]): only the shard cases need it

    from helpers_shards import samples
    (tmp / "s").mkdir()
    with wds.ShardWriter(str(tmp / "s" / "train-%06d.tar"), maxcount=5, verbose=0) as sink:
        for s in samples(n):
            sink.write((bad or {}).get(s["__key__"], s))
    return str(tmp / "s" / f"train-{{000000..{(n - 1) // 5:06d}}}.tar")


def _shard_sets(tmp: Path, root: str, *items: str) -> list[str]:
    return _sets(tmp, "data.name=webdataset", f"data.root={root}", "train.batch_size=8",
                 "method.queue_size=64", *items)


def _truncated_shard(tmp: Path) -> list[str]:
    root = _shards(tmp)
    shard = tmp / "s" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    return _shard_sets(tmp, root)


def _sample_without_image(tmp: Path) -> list[str]:
    return _shard_sets(tmp, _shards(tmp, bad={"000003": {"__key__": "000003", "txt": "a cat",
                                                         "cls": 0}}))


def _corrupt_in_shard(tmp: Path) -> list[str]:
    from helpers_shards import photo_bytes
    root = _shards(tmp, 16, bad={"000002": {"__key__": "000002", "jpg": photo_bytes(2)[:40],
                                            "cls": 2}})
    return _shard_sets(tmp, root)


def _parquet_no_image_column(tmp: Path) -> list[str]:
    from helpers_shards import write_parquet
    write_parquet(tmp / "pq" / "train-00000-of-00001.parquet", 0, 4, image_column="picture")
    return _sets(tmp, "data.name=parquet", f"data.root={tmp / 'pq'}")


def _shards_out_not_empty(tmp: Path) -> list[str]:
    for i in range(2):
        _png(tmp / "imgs" / "train" / "a" / f"{i}.png")
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    return [str(tmp / "imgs"), str(tmp / "out"), "--format", "webdataset"]


def _class_list_escape(tmp: Path) -> list[str]:
    for split in ("train", "val"):
        _png(tmp / "imgs" / split / "a" / "0.png")
    (tmp / "classes.txt").write_text("a\n../../etc\n")
    return _sets(tmp, "data.name=imagefolder", f"data.root={tmp / 'imgs'}",
                 f"data.class_list={tmp / 'classes.txt'}")


def _output_is_file(tmp: Path) -> list[str]:
    (tmp / "run").write_text("a regular file\n")
    return _sets(tmp)


def _output_holds_run(tmp: Path) -> list[str]:
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "config.yaml").write_text("run: {seed: 1}\n")
    (tmp / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return _sets(tmp)


def _resume_corrupt(tmp: Path) -> list[str]:
    from sslkit import config

    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    config.save(config.load(demo, [f"run.output_dir={tmp / 'run'}", *TINY]),
                tmp / "run" / "config.yaml")
    return ["--resume", *_sets(tmp)]


def _auto_resume_other_run(tmp: Path) -> list[str]:
    """A run directory whose config.yaml has another temperature than the given --config."""
    from sslkit import config

    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "last.pt").write_bytes(b"not read: refused before")
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    config.save(config.load(demo, [f"run.output_dir={tmp / 'run'}", *TINY]),
                tmp / "run" / "config.yaml")
    config.save(config.load(demo, [f"run.output_dir={tmp / 'run'}", *TINY,
                                   "method.temperature=0.5"]), tmp / "other.yaml")
    return ["--auto-resume", "--config", str(tmp / "other.yaml"), *_sets(tmp)]


def _auto_resume_no_config(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return ["--auto-resume", *_sets(tmp)]


# --------------------------------------------------------------------------- checkpoints
def tiny_run(tmp: Path, width: int = 4, vit: bool = False) -> Path:
    """A run directory in the sslkit format (no training): config.yaml, last.pt, backbone.pt."""
    import torch

    from sslkit import config
    from sslkit.models.backbones import backbone_from_config

    out = tmp / "trained"
    cfg = config.build({}, [f"run.output_dir={out}", *TINY, f"model.width={width}",
                            *(VIT2 if vit else [])])
    torch.manual_seed(0)
    bb, _ = backbone_from_config(cfg)
    (out / "checkpoints").mkdir(parents=True)
    model = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    torch.save({"format": "sslkit", "version": 1, "model": model, "optimizer": {}, "epoch": 1,
                "step": 4, "config": cfg.to_dict()}, out / "checkpoints" / "last.pt")
    torch.save(bb.state_dict(), out / "backbone.pt")
    (out / "config.yaml").write_text(cfg.to_yaml())
    return out


def _ckpt(kind: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        import torch

        path = tmp / "ckpt.pt"
        extra: list[str] = []
        if kind == "missing":
            path = tmp / "nope" / "last.pt"
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("this is not a checkpoint\n")
        elif kind == "truncated":
            data = (tiny_run(tmp) / "checkpoints" / "last.pt").read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif kind == "foreign":
            torch.save({"epoch": 3, "arch": "resnet50", "opt": [1, 2]}, path)
        elif kind == "other_arch":
            path = tiny_run(tmp) / "checkpoints" / "last.pt"
            extra = ["--set", "model.width=8"]
        elif kind == "no_config":
            src = tiny_run(tmp) / "backbone.pt"
            (tmp / "alone").mkdir()
            path = tmp / "alone" / "backbone.pt"
            path.write_bytes(src.read_bytes())
        elif kind == "pickle":
            torch.save({"format": "sslkit", "version": 1,
                        "model": {"x": _Payload(tmp / "PWNED")}, "epoch": 0, "step": 0,
                        "config": {}}, path)
        elif kind == "directory":
            path = tmp
        return ["--checkpoint", str(path), "--output", str(tmp / "eval"), *extra]
    return build


def _official(kind: str) -> Callable[[Path], list[str]]:
    """A checkpoint in facebookresearch/moco's layout (a ResNet-18), or a small ViT, handed to
    run_lincls.py or python -m sslkit.export."""
    def build(tmp: Path) -> list[str]:
        from official_layouts import write_moco_v2

        recipe = str(Path(__file__).resolve().parents[1] / "configs" / "imagenet_mocov2_200ep.yaml")
        path = tmp / "moco_v2.pth.tar"
        if kind != "vit":
            write_moco_v2(path, "resnet18")
        if kind == "no_config":
            return ["--checkpoint", str(path)]
        if kind == "other_arch":  # a ResNet-18 file, a ResNet-50 recipe
            return ["--checkpoint", str(path), "--config", recipe]
        if kind == "same_path":
            return [str(path), str(path)]
        if kind == "d2_suffix":
            return [str(path), str(tmp / "r18_d2.pt"), "--format", "detectron2"]
        vit = tiny_run(tmp, vit=True) / "backbone.pt"
        return [str(vit), str(tmp / "vit_d2.pkl"), "--format", "detectron2"]
    return build


def _ft(*items: str) -> Callable[[Path], list[str]]:
    """run_finetune.py on the tiny network at random init, with ``items``."""
    return lambda tmp: ["--baseline", "random-init", *_sets(tmp, *items)]


def _subset_file(kind: str) -> Callable[[Path], list[str]]:
    """A SimCLR-style subset file naming images that are not there (an image folder), or
    handed to a source of tensors."""
    def build(tmp: Path) -> list[str]:
        for cls in ("a", "b"):
            for split in ("train", "val"):
                _png(tmp / "imgs" / split / cls / f"{cls}_0.png")
        (tmp / "1percent.txt").write_text("a_0.png\nn01440764_10026.JPEG\nn01440764_10027.JPEG\n")
        data = (["data.name=imagefolder", f"data.root={tmp / 'imgs'}"] if kind == "missing"
                else [])
        return ["--baseline", "random-init",
                *_sets(tmp, *data, f"finetune.subset_file={tmp / '1percent.txt'}")]
    return build


def _finetuned_elsewhere(tmp: Path) -> list[str]:
    """An output directory holding the fine-tuning of the same checkpoint at 50 % labels,
    asked for 25 %."""
    from sslkit.evaluation.finetune import run_finetune

    ckpt = str(tiny_run(tmp) / "checkpoints" / "last.pt")
    sets = ["run.progress=false", "finetune.epochs=1", "finetune.batch_size=16"]
    run_finetune(ckpt, None, [*sets, "finetune.label_fraction=0.5"], output=str(tmp / "ft"))
    return ["--checkpoint", ckpt, "--output", str(tmp / "ft"), "--set", *sets,
            "finetune.label_fraction=0.25"]


class _Payload:
    """Unpickling this would create a file: proof that a payload ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# --------------------------------------------------------------------------- the table
CASES: list[Case] = [
    # malformed or unknown config keys, types and ranges
    Case("unknown-key-set", "config", "`--set train.epochz=3`", _set("train.epochz=3"),
         ("unknown config key 'train.epochz'", "did you mean 'train.epochs'")),
    Case("unknown-key-file", "config", "`optim: {learning_rate: 0.1}` in the config file",
         _file("optim:\n  learning_rate: 0.1\n"), ("unknown config key 'optim.learning_rate'",
                                                  "did you mean 'optim.lr'")),
    Case("unknown-section", "config", "`trainer: {epochs: 3}` in the config file",
         _file("trainer:\n  epochs: 3\n"), ("unknown config key 'trainer.epochs'",
                                            "did you mean 'train.epochs'")),
    Case("section-not-mapping", "config", "`train: 5` in the config file",
         _file("train: 5\n"), ("section 'train' must be a mapping",)),
    Case("wrong-type", "config", "`--set train.epochs=ten`", _set("train.epochs=ten"),
         ("train.epochs=ten", "expected an integer")),
    Case("float-for-int", "config", "`--set train.batch_size=2.5`", _set("train.batch_size=2.5"),
         ("train.batch_size=2.5", "integer")),
    Case("zero-batch", "config", "`--set train.batch_size=0`", _set("train.batch_size=0"),
         ("train.batch_size=0", ">= 1")),
    Case("negative-batch", "config", "`--set train.batch_size=-16`",
         _set("train.batch_size=-16"), ("train.batch_size=-16", ">= 1")),
    Case("zero-temperature", "config", "`--set method.temperature=0`",
         _set("method.temperature=0"), ("method.temperature=0", "> 0")),
    Case("dropout-one", "config", "`--set batchformer.dropout=1.0`",
         _set("batchformer.dropout=1.0"), ("batchformer.dropout=1.0", "< 1")),
    Case("negative-lr", "config", "`--set optim.lr=-0.1`", _set("optim.lr=-0.1"),
         ("optim.lr=-0.1", "> 0")),
    Case("nan-lr", "config", "`--set optim.lr=.nan`", _set("optim.lr=.nan"),
         ("optim.lr", "expected a number")),
    Case("bool-typo", "config", "`--set batchformer.enabled=yes please`",
         _set("batchformer.enabled=yes please"), ("batchformer.enabled", "true/false")),
    Case("subset-fraction", "config", "`--set data.subset=1.5`", _set("data.subset=1.5"),
         ("data.subset=1.5", "fraction")),
    Case("long-tail-below-one", "config", "`--set data.long_tail=0.5`",
         _set("data.long_tail=0.5"), ("data.long_tail=0.5", ">= 1")),
    Case("long-tail-not-a-number", "config", "`--set data.long_tail=steep`",
         _set("data.long_tail=steep"), ("data.long_tail=steep", "a number")),
    Case("bf-keys-queue", "config",
         "`--set batchformer.enabled=true batchformer.keys=both method.queue_size=80` (batch 16)",
         _set("batchformer.enabled=true", "batchformer.keys=both", "method.queue_size=80"),
         ("method.queue_size=80", "batchformer.keys=both")),
    Case("bf-keys-without-bf", "config", "`--set batchformer.keys=both` without a BatchFormer",
         _set("batchformer.keys=both"), ("batchformer.keys=both", "batchformer.enabled=true")),
    Case("bf-scheme-without-bf", "config", "`--set batchformer.frozen=true "
         "batchformer.loss_reduction=sum` without a BatchFormer",
         _set("batchformer.frozen=true", "batchformer.loss_reduction=sum"),
         ("batchformer.frozen=true", "batchformer.loss_reduction=sum",
          "batchformer.enabled=true")),
    Case("crop-scale-order", "config", "`--set augment.crop_scale=[0.9,0.2]`",
         _set("augment.crop_scale=[0.9,0.2]"), ("augment.crop_scale", "minimum exceeds")),
    Case("warmup-too-long", "config", "`--set optim.warmup_epochs=5` with 1 epoch",
         _set("optim.warmup_epochs=5"), ("optim.warmup_epochs=5", "less than train.epochs")),
    Case("queue-not-multiple", "config", "`--set method.queue_size=1000` (batch 16)",
         _set("method.queue_size=1000"), ("method.queue_size=1000", "multiple",
                                          "--set method.queue_size=992")),
    Case("bf-heads", "config", "`--set batchformer.enabled=true batchformer.heads=3` "
         "(32-d features)", _set("batchformer.enabled=true", "batchformer.heads=3"),
         ("batchformer.heads=3", "feature dim 32")),
    Case("bf2-resnet", "config", "`--set batchformer.enabled=true batchformer.version=v2` "
         "with a ResNet-18", _set("batchformer.enabled=true", "batchformer.version=v2"),
         ("batchformer.version=v2", "needs a ViT backbone", "model.backbone=resnet18")),
    Case("bf2-insert-range", "config", "`--set batchformer.version=v2 "
         "batchformer.insert_after=[2]` with a 2-block ViT",
         _set(*VIT2, "batchformer.enabled=true", "batchformer.version=v2",
              "batchformer.insert_after=[2]"),
         ("batchformer.insert_after=[2]", "2 blocks", "0..1")),
    Case("bf2-heads", "config", "`--set batchformer.version=v2 batchformer.heads=5` with a "
         "ViT-Tiny (width 192)", _set(*VIT2, "batchformer.enabled=true",
                                      "batchformer.version=v2", "batchformer.heads=5"),
         ("batchformer.heads=5", "192", "--set batchformer.heads=4")),
    Case("dist-timeout-zero", "config", "`--set run.dist_timeout_s=0`",
         _set("run.dist_timeout_s=0"), ("run.dist_timeout_s",)),
    Case("checkpoint-minutes-zero", "config", "`--set train.checkpoint_every_minutes=0`",
         _set("train.checkpoint_every_minutes=0"), ("train.checkpoint_every_minutes",)),
    Case("on-collapse-unknown", "config", "`--set train.on_collapse=halt`",
         _set("train.on_collapse=halt"), ("train.on_collapse=halt", "'warn', 'stop'")),
    Case("spike-factor-one", "config", "`--set train.spike_factor=1` (a spike is a loss above "
         "this times the median)", _set("train.spike_factor=1"),
         ("train.spike_factor", "must be > 1")),
    Case("batch-too-large", "config", "`--set train.batch_size=128` with 64 images",
         _set("train.batch_size=128", "method.queue_size=128"),
         ("train.batch_size=128", "64 training images")),
    Case("micro-batch-not-dividing", "config",
         "`--set train.micro_batch=5` with a per-process batch of 16",
         _set("train.micro_batch=5"), ("train.micro_batch=5 must divide the per-process "
                                       "batch 16", "train.micro_batch=4")),
    Case("micro-batch-bn-splits", "config",
         "`--set train.micro_batch=8` with MoCo-v2's one-process `method.bn_splits=8`",
         _set("method.bn_splits=8", "train.micro_batch=8"),
         ("train.micro_batch=8", "method.bn_splits=8", "--set method.bn_splits=2")),
    Case("micro-batch-bfv2", "config", "`--set train.micro_batch=4` with BatchFormerV2",
         _set(*VIT2, "batchformer.enabled=true", "batchformer.version=v2",
              "train.micro_batch=4"), ("BatchFormerV2", "batchformer.version=v1")),
    # unknown names
    Case("unknown-backbone", "names", "`--set model.backbone=resnet19`",
         _set("model.backbone=resnet19"), ("model.backbone=resnet19", "'resnet18'")),
    Case("timm-unknown-model", "names", "`--set model.backbone=timm/resnet19`",
         _set("model.backbone=timm/resnet19"), ("model.backbone=timm/resnet19",
                                                 "timm has no model", "timm/resnet")),
    Case("timm-missing", "names", "`--set model.backbone=timm/resnet18` without timm installed",
         _set("model.backbone=timm/resnet18"), ("needs the optional package timm",
                                                 "pip install -e '.[timm]'"),
         hide_modules=("timm",)),
    Case("timm-bfv2", "config", "`--set batchformer.version=v2` on a timm ViT",
         _set("model.backbone=timm/vit_tiny_patch16_224", "batchformer.enabled=true",
              "batchformer.version=v2"), ("batchformer.version=v2", "timm", "version=v1")),
    Case("unknown-dataset", "names", "`--set data.name=mnist`", _set("data.name=mnist"),
         ("data.name=mnist", "'fashion_mnist'")),
    Case("unknown-optimizer", "names", "`--set optim.name=adam`", _set("optim.name=adam"),
         ("optim.name=adam", "'adamw'")),
    Case("unknown-device", "names", "`--set run.device=tpu`", _set("run.device=tpu"),
         ("run.device=tpu", "'auto', 'cpu', 'cuda'")),
    Case("unknown-precision", "names", "`--set run.precision=fp8`", _set("run.precision=fp8"),
         ("run.precision=fp8", "'bf16'")),
    Case("unknown-method", "names", "`--set method.name=simclr`", _set("method.name=simclr"),
         ("method.name=simclr", "'mocov2', 'mocov3'")),
    # no GPU
    Case("cuda-without-gpu", "device", "`--set run.device=cuda` on a machine without a GPU",
         _set("run.device=cuda"), ("run.device=cuda", "no CUDA GPU", "run.device=cpu"),
         needs_no_gpu=True),
    Case("fp16-on-cpu", "device", "`--set run.precision=fp16` on the CPU",
         _set("run.precision=fp16"), ("run.precision=fp16", "CUDA")),
    # malformed --set / command line
    Case("set-no-equals", "command line", "`--set train.epochs`", _raw("--set", "train.epochs"),
         ("malformed --set 'train.epochs'", "key=value")),
    Case("set-bad-yaml", "command line", "`--set train.epochs=[1,`",
         _raw("--set", "train.epochs=[1,"), ("malformed --set", "not a YAML scalar")),
    Case("set-empty-value", "command line", "`--set train.epochs=`",
         _raw("--set", "train.epochs="), ("malformed --set", "no value")),
    Case("unknown-flag", "command line", "`run_pretrain.py --epochs 3`",
         _raw("--epochs", "3"), ("unrecognized arguments: --epochs 3",)),
    # config files
    Case("config-missing", "config file", "`--config nope.yaml` (no such file)",
         _raw("--config", "{tmp}/nope.yaml"), ("nope.yaml' does not exist",)),
    Case("config-empty", "config file", "an empty config file", _file(""), ("is empty",)),
    Case("config-list", "config file", "a config file holding a YAML list",
         _file("- a\n- b\n"), ("must be a mapping",)),
    Case("config-binary", "config file", "a binary file as the config",
         _file(b"\x00\x01\x02\x03"), ("is binary",)),
    Case("config-python-tag", "config file",
         "`run: !!python/object/apply:os.system ['id']` in the config file",
         _file("run: !!python/object/apply:os.system ['id']\n"),
         ("python tags are not allowed",)),
    Case("config-bad-yaml", "config file", "a config file with unclosed brackets",
         _file("run: {output_dir: [x\n"), ("not valid YAML",)),
    # data
    Case("dataset-missing", "data",
         "`--set data.name=cifar10 data.root=<empty dir> data.download=false`",
         lambda tmp: _sets(tmp, "data.name=cifar10", f"data.root={tmp}", "data.download=false"),
         ("cifar10: data not found", "data.download=true")),
    Case("imagefolder-empty", "data", "an image folder whose class folders hold no images",
         _empty_folder, ("imagefolder",)),
    Case("imagefolder-no-root", "data", "`--set data.name=imagefolder data.root=<missing>`",
         lambda tmp: _sets(tmp, "data.name=imagefolder", f"data.root={tmp / 'nope'}"),
         ("data.root", "does not exist", "train/<class>", "unlabelled")),
    Case("imagefolder-no-val", "data", "evaluating on an image folder without val/",
         _no_val_folder, ("has no val/ folder", "kNN and the linear probe"), script="lincls"),
    Case("imagefolder-corrupt", "data", "an image folder holding an undecodable file",
         _corrupt_image, ("broken.png", "data.skip_corrupt"), lazy=True),
    Case("class-list-escape", "data", "a class list naming `../../etc`", _class_list_escape,
         ("../../etc",)),
    Case("shards-no-match", "data", "`--set data.name=webdataset "
         "data.root=<tmp>/train-{000000..000009}.tar` (no such files)",
         lambda tmp: _sets(tmp, "data.name=webdataset",
                           f"data.root={tmp / 'train-{000000..000009}.tar'}"),
         ("no file matches data.root",)),
    Case("shards-truncated", "data", "a truncated WebDataset shard", _truncated_shard,
         ("train-000001.tar' is truncated or corrupt after member",)),
    Case("shards-no-image", "data", "a WebDataset sample without an image (`txt` and `cls` "
         "only)", _sample_without_image,
         ("sample '000003'", "has no image field", "its fields are cls, txt")),
    Case("shards-corrupt-image", "data", "a WebDataset shard holding an undecodable JPEG",
         _corrupt_in_shard, ("train-000000.tar:000002.jpg", "data.skip_corrupt"), lazy=True),
    Case("shards-no-val", "data", "WebDataset shards with the online kNN but no "
         "`data.val_root`", lambda tmp: _shard_sets(tmp, _shards(tmp), "eval.knn_every=1"),
         ("set data.val_root", "eval.knn_every=0")),
    Case("parquet-no-image-column", "data", "a Parquet file without the `image` column",
         _parquet_no_image_column, ("has no column 'image'", "its columns are picture, label",
                                    "data.image_column")),
    Case("webdataset-missing", "names", "`--set data.name=webdataset` without the "
         "webdataset package", lambda tmp: _sets(tmp, "data.name=webdataset",
                                                 f"data.root={tmp}"),
         ("pip install", ".[webdataset]"), hide_modules=("webdataset",)),
    Case("shards-out-not-empty", "output", "`python -m sslkit.data.shards SRC OUT` into a "
         "non-empty OUT", _shards_out_not_empty, ("is not empty",), script="shards"),
    # output directory
    Case("output-is-file", "output", "`run.output_dir` is a regular file", _output_is_file,
         ("is a file, not a directory",)),
    Case("output-holds-run", "output", "`run.output_dir` holds another run",
         _output_holds_run, ("already holds a run", "--resume", "--overwrite")),
    Case("output-unwritable", "output", "`run.output_dir=/proc/sslkit-run` (not writable)",
         _raw("--set", "run.output_dir=/proc/sslkit-run", *[x for it in TINY for x in ("--set", it)]),
         ("/proc/sslkit-run",)),
    Case("resume-nothing", "output", "`--resume` into an empty directory",
         lambda tmp: ["--resume", *_sets(tmp)], ("nothing to resume",)),
    Case("resume-corrupt", "output", "`--resume` when last.pt is corrupt and no prev.pt exists",
         _resume_corrupt, ("last.pt", "damaged PyTorch file", "corrupt or truncated")),
    Case("auto-resume-and-resume", "output", "`--auto-resume --resume`",
         lambda tmp: ["--auto-resume", "--resume", *_sets(tmp)],
         ("--auto-resume decides by itself", "drop --resume")),
    Case("auto-resume-other-run", "output", "`--auto-resume` into a run directory whose "
         "config.yaml has another `method.temperature` than `--config`",
         _auto_resume_other_run, ("--auto-resume", "method.temperature", "gives 0.5")),
    Case("auto-resume-no-config", "output", "`--auto-resume` into a directory holding run "
         "files but no config.yaml", _auto_resume_no_config, ("no config.yaml",)),
    # checkpoints handed to run_lincls.py
    Case("ckpt-missing", "checkpoint", "`--checkpoint nope/last.pt`", _ckpt("missing"),
         ("does not exist",), script="lincls"),
    Case("ckpt-directory", "checkpoint", "`--checkpoint <a directory>`", _ckpt("directory"),
         ("is a directory",), script="lincls"),
    Case("ckpt-empty", "checkpoint", "an empty checkpoint file", _ckpt("empty"),
         ("empty",), script="lincls"),
    Case("ckpt-text", "checkpoint", "a text file as the checkpoint (`--checkpoint README.md`)",
         _ckpt("text"), ("is not a PyTorch checkpoint", "last.pt"), script="lincls"),
    Case("ckpt-truncated", "checkpoint", "a truncated last.pt", _ckpt("truncated"),
         ("damaged PyTorch file", "corrupt or truncated"), script="lincls"),
    Case("ckpt-foreign", "checkpoint", "a checkpoint in no layout sslkit reads (a dict of "
         "numbers)", _ckpt("foreign"), ("in no checkpoint layout sslkit reads",
                                        "facebookresearch/moco v1/v2", "timm"), script="lincls"),
    Case("ckpt-official-no-config", "checkpoint", "an official MoCo-v2 file without `--config`",
         _official("no_config"), ("facebookresearch/moco", "carries no config", "--config"),
         script="lincls"),
    Case("ckpt-official-other-arch", "checkpoint", "an official MoCo-v2 ResNet-18 file with "
         "the ResNet-50 recipe", _official("other_arch"), ("does not fit", "resnet50", "shape"),
         script="lincls"),
    Case("export-same-path", "export", "`python -m sslkit.export F F`", _official("same_path"),
         ("refusing to overwrite",), script="export"),
    Case("export-d2-vit", "export", "`--format detectron2` of a ViT", _official("vit"),
         ("detectron2", "ResNet"), script="export"),
    Case("export-d2-suffix", "export", "`--format detectron2` to a file not ending in .pkl",
         _official("d2_suffix"), (".pkl",), script="export"),
    Case("ckpt-other-arch", "checkpoint", "a width-4 checkpoint with `--set model.width=8`",
         _ckpt("other_arch"), ("does not fit", "width 8", "shape"), script="lincls"),
    Case("ckpt-no-config", "checkpoint", "a backbone.pt with no config.yaml beside it",
         _ckpt("no_config"), ("no config", "--config"), script="lincls"),
    Case("ckpt-pickle", "checkpoint", "a checkpoint carrying a pickle payload",
         _ckpt("pickle"), ("weights_only",), script="lincls"),
    Case("lincls-nothing", "checkpoint", "`run_lincls.py` without --checkpoint or --baseline",
         _raw(), ("--checkpoint",), script="lincls"),
    Case("lincls-bad-baseline", "checkpoint", "`run_lincls.py --baseline pixels`",
         _raw("--baseline", "pixels"), ("invalid choice: 'pixels'",), script="lincls"),
    # fine-tuning and the labelled images
    Case("finetune-nothing", "finetune", "`run_finetune.py` without --checkpoint or --baseline",
         _raw(), ("--checkpoint", "--baseline random-init"), script="finetune"),
    Case("finetune-fraction-range", "finetune", "`--set finetune.label_fraction=1.5`",
         _ft("finetune.label_fraction=1.5"), ("finetune.label_fraction=1.5", "<= 1"),
         script="finetune"),
    Case("finetune-fraction-zero", "finetune", "`--set finetune.label_fraction=0`",
         _ft("finetune.label_fraction=0"), ("finetune.label_fraction", "> 0"),
         script="finetune"),
    Case("finetune-fraction-and-file", "finetune", "`--set finetune.label_fraction=0.1 "
         "finetune.subset_file=1percent.txt`",
         _ft("finetune.label_fraction=0.1", "finetune.subset_file=1percent.txt"),
         ("finetune.label_fraction=0.1", "finetune.subset_file", "set one of them to null"),
         script="finetune"),
    Case("finetune-subset-missing", "finetune", "a subset file naming 2 images the image "
         "folder does not hold", _subset_file("missing"),
         ("names 2 image(s) that are not in the training folder",
          "'n01440764_10026.JPEG'", "1 of 3 found"), script="finetune"),
    Case("finetune-subset-no-files", "finetune", "a subset file with `data.name=synthetic`",
         _subset_file("tensors"), ("finetune.subset_file", "data.name=synthetic",
                                   "holds no files"), script="finetune"),
    Case("finetune-other-run", "finetune", "`--output` holding the fine-tuning of the same "
         "checkpoint at another label fraction", _finetuned_elsewhere,
         ("holds a fine-tuning run with finetune.label_fraction=0.5", "(this one: 0.25)",
          "--output DIR"), script="finetune"),
    Case("finetune-layer-decay-resnet", "finetune", "`--set finetune.layer_decay=0.65` on a "
         "ResNet", _ft("finetune.layer_decay=0.65"), ("finetune.layer_decay=0.65", "ViT",
                                                       "finetune.layer_decay=1"),
         script="finetune"),
    Case("finetune-mixup-odd", "finetune", "`--set finetune.mixup=0.8 finetune.batch_size=15`",
         _ft("finetune.mixup=0.8", "finetune.batch_size=15"), ("must be even",
                                                                "finetune.batch_size"),
         script="finetune"),
    Case("finetune-randaugment-without-timm-view", "finetune",
         "`--set finetune.rand_augment=rand-m9-mstd0.5-inc1` with `finetune.augment=crop_flip`",
         _ft("finetune.rand_augment=rand-m9-mstd0.5-inc1"),
         ("finetune.rand_augment", "finetune.augment=timm"), script="finetune"),
    Case("finetune-timm-missing", "finetune", "`--set finetune.augment=timm` without timm "
         "installed", _ft("finetune.augment=timm"), ("needs the optional package timm",
                                                     "pip install -e '.[timm]'"),
         script="finetune", hide_modules=("timm", "timm.data")),
    Case("finetune-official-no-config", "finetune", "an official MoCo-v2 file without "
         "`--config`", _official("no_config"), ("facebookresearch/moco", "carries no config",
                                                 "--config"), script="finetune"),
]
