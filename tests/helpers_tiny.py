"""A tiny, fast configuration for end-to-end tests (synthetic data, narrow ResNet-18)."""
from __future__ import annotations

from pathlib import Path

from sslkit import config


def tiny_overrides(out: Path | str, method: str = "mocov2", bf: bool = False,
                   epochs: int = 2, extra: list[str] | None = None) -> list[str]:
    # model.maxpool=false: on 16 px images the stem's max-pool (demo.yaml's, for 28 px) would
    # leave one position a side at the last stage, too few for split-BN groups of two
    items = [
        f"run.output_dir={out}", "run.device=cpu", "run.precision=fp32", "run.seed=0",
        "run.log_every_steps=1", "run.progress=false", "run.aug_grid_every=1",
        "data.name=synthetic", "data.image_size=16", "data.channels=3",
        "data.synthetic_train=64", "data.synthetic_test=32", "data.synthetic_classes=4",
        "data.num_workers=0",
        "model.backbone=resnet18", "model.cifar_stem=true", "model.maxpool=false", "model.width=4",
        f"method.name={method}", "method.proj_hidden_dim=32", "method.proj_dim=16",
        f"batchformer.enabled={str(bf).lower()}", "batchformer.heads=2",
        "optim.lr=0.05", "train.batch_size=16", f"train.epochs={epochs}",
        "eval.knn_k=5", "eval.knn_every=1", "eval.batch_size=32", "eval.embedding_samples=0",
        "eval.epochs=2", "eval.knn_ks=[5]", "eval.knn_ts=[0.1]",
    ]
    if method == "mocov2":
        items.append("method.queue_size=64")
    else:
        items.append("method.pred_hidden_dim=32")
    return items + list(extra or [])


DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def tiny_config(out: Path | str, **kw) -> config.Config:
    """What ``run_pretrain.py --set <tiny_overrides>`` runs: demo.yaml plus the overrides."""
    return config.load(DEMO, tiny_overrides(out, **kw))


def lincls_items(out: Path, extra=()) -> list[str]:
    """A small evaluation setup: synthetic 16 px, 4 classes, a width-4 ResNet-18."""
    return [f"run.output_dir={out}", "run.device=cpu", "run.precision=fp32", "run.seed=0",
            "run.progress=false", "data.name=synthetic", "data.image_size=16",
            "data.synthetic_train=96", "data.synthetic_test=48", "data.synthetic_classes=4",
            "data.num_workers=0", "model.backbone=resnet18", "model.cifar_stem=true",
            "model.maxpool=false", "model.width=4", "method.queue_size=64", "train.batch_size=16",
            "eval.epochs=2", "eval.batch_size=32", "eval.knn_k=5", "eval.knn_ks=[5,10]",
            "eval.knn_ts=[0.07,0.1]", "eval.lr_grid=[0.1,1.0]", "eval.wd_grid=[0.0]",
            "eval.embedding_samples=0", *extra]


def make_tiny_run(out: Path) -> Path:
    """A run directory in the sslkit format (no training): checkpoints/last.pt, backbone.pt,
    config.yaml."""
    import torch

    from sslkit.models.backbones import backbone_from_config
    cfg = config.build({}, lincls_items(out))
    torch.manual_seed(1)
    bb, _ = backbone_from_config(cfg)
    model = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    model.update({"batchformer.encoder.weight": torch.randn(4, 4),
                  "momentum_backbone.conv1.weight": torch.randn(4, 3, 3, 3)})
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"format": "sslkit", "version": 1, "model": model, "optimizer": {},
                "epoch": 0, "step": 0, "config": cfg.to_dict()}, out / "checkpoints" / "last.pt")
    torch.save(bb.state_dict(), out / "backbone.pt")
    (out / "config.yaml").write_text(cfg.to_yaml())
    return out
