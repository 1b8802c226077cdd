"""The online evaluation of pretraining: the kNN of the backbone's features every
``eval.knn_every`` epochs (:func:`online_knn`), and the online linear probe
(``eval.online_probe``): a linear classifier trained during pretraining on the detached
backbone features of each training batch, as solo-learn, lightly and stable-pretraining do,
to watch the representation without stopping the run.

It has its own SGD optimizer (momentum 0.9, no weight decay, LR ``eval.online_probe_lr`` for
a batch of 256, scaled linearly) and its own seeded initialisation, and it sees the features
only detached: the backbone, the method and the run's random streams are exactly as without
it. Images labelled -1 (unlabelled) are left out. Under DDP the gradient is averaged over the
processes, so every process holds the same head. Its train accuracy is reported per epoch
(``probe_train_top1``), its test accuracy at the online-kNN epochs (``probe_test_top1``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslkit import distributed as dist
from sslkit.augment import eval_transform_from_config
from sslkit.config import Config
from sslkit.data import build_loader
from sslkit.evaluation.features import extract_features
from sslkit.knn import knn_accuracy
from sslkit.train.optim import linear_scaled
from sslkit.train.runtime import fork_rng


class OnlineProbe:
    """``step(features (B, D), labels (B,))`` after each training step; ``epoch_stats()`` and
    ``accuracy(features, labels)`` for the logs."""

    def __init__(self, feat_dim: int, num_classes: int, lr: float, batch_size: int,
                 device: torch.device, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(feat_dim, num_classes)
        with torch.no_grad():  # nn.Linear's own init would draw from the run's RNG
            bound = feat_dim ** -0.5
            self.head.weight.copy_(torch.empty(num_classes, feat_dim).uniform_(
                -bound, bound, generator=g))
            self.head.bias.zero_()
        self.head.to(device)
        self.optimizer = torch.optim.SGD(self.head.parameters(), lr=linear_scaled(lr, batch_size),
                                         momentum=0.9, weight_decay=0.0)
        self.loss_sum = self.correct = self.count = 0.0

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        labels = labels.to(features.device, non_blocking=True).long()
        keep = labels >= 0
        x, y = features.detach().float()[keep], labels[keep]
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.head(x)
            loss = F.cross_entropy(logits, y) if y.numel() else logits.sum() * 0.0
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.get_world_size() > 1:
            for p in self.head.parameters():
                p.grad = dist.all_reduce_mean(p.grad)
        self.optimizer.step()
        self.loss_sum += float(loss.detach()) * y.numel()
        self.correct += float((logits.detach().argmax(1) == y).sum())
        self.count += y.numel()

    def epoch_stats(self) -> dict:
        """``probe_train_top1`` / ``probe_train_loss`` of the steps since the last call."""
        totals = dist.all_reduce_sum(torch.tensor([self.loss_sum, self.correct, self.count],
                                                  dtype=torch.float64,
                                                  device=self.head.weight.device))
        loss_sum, correct, count = totals.tolist()
        self.loss_sum = self.correct = self.count = 0.0
        if count == 0:
            return {}
        return {"probe_train_top1": round(100.0 * correct / count, 3),
                "probe_train_loss": round(loss_sum / count, 5)}

    @torch.no_grad()
    def accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 in percent of the head on ``features`` (N, D) (e.g. the test split's)."""
        keep = labels >= 0
        x = features[keep].to(self.head.weight.device).float()
        pred = torch.cat([self.head(x[s:s + 8192]).argmax(1).cpu()
                          for s in range(0, x.shape[0], 8192)]) if x.shape[0] else x
        return round(100.0 * float((pred == labels[keep].cpu()).float().mean()), 3) \
            if x.shape[0] else float("nan")

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])


@torch.no_grad()
def online_knn(cfg: Config, backbone: nn.Module, sets: tuple, device: torch.device,
               precision: str, probe: "OnlineProbe | None" = None) -> dict:
    """kNN top-1/top-5 of the backbone's features: the train split ``sets[0]`` as the bank
    (``eval.knn_bank_size`` of it, seeded), the test split ``sets[1]`` as the queries; the
    online probe's accuracy on the same test features. The run's random streams are left as
    they were."""
    bank, test = sets
    if cfg.eval.knn_bank_size and cfg.eval.knn_bank_size < len(bank):
        g = torch.Generator().manual_seed(cfg.run.seed)
        bank = bank.subset(torch.randperm(len(bank), generator=g)[:cfg.eval.knn_bank_size])
    tf = eval_transform_from_config(cfg).to(device)
    feats = []
    with fork_rng(device):
        for ds in (bank, test):
            loader = build_loader(ds, cfg.eval.batch_size, train=False,
                                  num_workers=cfg.data.num_workers,
                                  pin_memory=device.type == "cuda")
            feats.append(extract_features(backbone, loader, device, precision, transform=tf,
                                          batch_size=cfg.eval.batch_size))
    (fb, yb), (ft, yt) = feats
    num_classes = int(max(yb.max(), yt.max())) + 1
    top1, top5 = knn_accuracy(fb, yb, ft, yt, num_classes, k=cfg.eval.knn_k,
                              temperature=cfg.eval.knn_t)
    out = {"knn_top1": round(top1, 3), "knn_top5": round(top5, 3)}
    if probe is not None:  # the online probe on the same test features
        out["probe_test_top1"] = probe.accuracy(ft, yt)
    return out
