"""Training engine: device, precision, the training loop, logging and checkpoints.

Every device decision lives here (and in :mod:`sslkit.distributed`); methods, losses and
augmentation follow their inputs' device.

One step: loader (CPU, uint8) -> device -> two views (kornia, on the device) -> method ->
loss -> backward -> optimizer step -> LR schedule -> momentum update -> log. Every
``eval.knn_every`` epochs an online kNN on backbone features; a checkpoint every epoch and
every ``train.checkpoint_every_steps`` (atomic), and ``backbone.pt`` at the end.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sslkit import distributed as dist_utils
from sslkit.checkpoint import (PREV_NAME, load_checkpoint_with_fallback, save_atomic)
from sslkit.config import Config, RunConfig
from sslkit.errors import ConfigError, UserError

RUN_FILES = ("config.yaml", "metrics.jsonl", "tb", "checkpoints", "backbone.pt", "eval.json")
# keys whose change makes a checkpoint unusable for --resume
STRUCTURAL = ("data.name", "data.channels", "data.image_size", "model", "method", "batchformer",
              "optim.name", "train.batch_size")


class TrainingDiverged(UserError):
    """The loss became NaN/inf (train.nan_policy=stop)."""


# --------------------------------------------------------------------------- device/precision
def resolve_device(run: RunConfig) -> torch.device:
    """``run.device``: auto picks CUDA when present; ``cuda`` without a GPU is a user error."""
    if run.device == "cuda" or (run.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("run.device=cuda but no CUDA GPU is available here; use "
                              "--set run.device=cpu (or auto)")
        return torch.device("cuda", dist_utils.get_local_rank())
    return torch.device("cpu")


def resolve_precision(run: RunConfig, device: torch.device) -> str:
    """``auto`` is bf16 on a GPU that supports it, else fp32; fp16 needs CUDA."""
    p = run.precision
    if p == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if p == "fp16" and device.type != "cuda":
        raise ConfigError("run.precision=fp16 needs a CUDA device (it uses a GradScaler); on "
                          "the CPU use bf16 or fp32")
    return p


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_cpu(run: RunConfig) -> None:
    if run.num_threads:
        torch.set_num_threads(run.num_threads)
    torch.set_flush_denormal(True)  # denormals made CPU feature extraction ~3x slower


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- run directory
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an unusable run directory before any work starts; changes nothing on disk."""
    if out.exists() and not out.is_dir():
        raise UserError(f"run.output_dir '{out}' is a file, not a directory; choose another "
                        f"run.output_dir")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise UserError(f"run.output_dir '{out}' cannot be created: '{base}' is not a directory")
    try:  # a real write probe (permission bits alone mislead root and read-only mounts)
        probe = base / f".sslkit-write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"run.output_dir '{out}' is not writable ({e.strerror} in '{base}'); "
                        f"choose another run.output_dir") from None
    present = [n for n in RUN_FILES if (out / n).exists()]
    if resume:
        ck = out / "checkpoints"
        if not (ck / "last.pt").exists() and not (ck / PREV_NAME).exists():
            raise UserError(f"nothing to resume in '{out}': no checkpoints/last.pt; start the "
                            f"run without --resume")
    elif present and not overwrite:
        raise UserError(f"run.output_dir '{out}' already holds a run ({', '.join(present)}); "
                        f"continue it with --resume, replace it with --overwrite, or choose "
                        f"another run.output_dir")


def clear_run_dir(out: Path) -> None:
    """--overwrite: remove only the files a run writes (nothing else in the directory)."""
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def compare_resume_config(saved: dict, cfg: Config, source: Path) -> list[str]:
    """Refuse structural changes; return the other changed keys (printed as a note)."""
    old, new = _flat(saved), _flat(cfg.to_dict())
    changed = [k for k in new if old.get(k, new[k]) != new[k]]
    for k in changed:
        if any(k == s or k.startswith(s + ".") for s in STRUCTURAL):
            raise UserError(f"cannot resume from '{source}': {k} was {old[k]!r} there but is "
                            f"{new[k]!r} now; resume with the run's own config.yaml")
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed]


# --------------------------------------------------------------------------- state helpers
def rng_state() -> dict:
    py = random.getstate()
    npst = np.random.get_state()
    state = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [npst[0], torch.from_numpy(npst[1].astype(np.int64)), int(npst[2]),
                       int(npst[3]), float(npst[4])],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point())


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per line) + TensorBoard scalars; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, start_step: int):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if start_step > 0 and self.path.exists():  # drop lines a killed run wrote past resume
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(ln + "\n" for ln in keep))
            os.replace(tmp, self.path)
        self.fh = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step or None)

    def write(self, record: dict, prefix: str) -> None:
        if not self.enabled:
            return
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def image(self, tag: str, img: torch.Tensor, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, img, step)

    def close(self, hparams: dict | None = None, final: dict | None = None) -> None:
        if not self.enabled:
            return
        self.fh.close()
        if self.tb is not None:
            if hparams is not None and final:
                self.tb.add_hparams(hparams, {f"hparam/{k}": v for k, v in final.items()},
                                    run_name=".")
            self.tb.close()


# --------------------------------------------------------------------------- the trainer
@dataclasses.dataclass
class Summary:
    run_dir: str
    steps: int
    epochs_done: int
    final_loss: float | None
    knn_top1: float | None
    seconds: float
    skipped_steps: int
    backbone: str | None


class Trainer:
    """Builds everything from a Config, then runs (or resumes) pretraining."""

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False):
        self.cfg = cfg
        self.resume, self.overwrite = resume, overwrite or cfg.run.overwrite
        self.run_dir = Path(cfg.run.output_dir)
        # 1. everything that can refuse the input, before anything is written
        self.device = resolve_device(cfg.run)
        self.precision = resolve_precision(cfg.run, self.device)
        self.distributed = dist_utils.init_distributed(self.device.type)
        self.rank, self.world = dist_utils.get_rank(), dist_utils.get_world_size()
        self.main = self.rank == 0
        if cfg.train.batch_size % self.world:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} (the global batch) must "
                              f"be divisible by the {self.world} processes")
        self.local_batch = cfg.train.batch_size // self.world
        problem = None
        if self.main:
            try:
                check_run_dir(self.run_dir, resume, self.overwrite)
            except UserError as e:
                problem = str(e)
        problem = dist_utils.broadcast_object(problem)  # every rank stops, none hangs
        if problem is not None:
            raise UserError(problem)
        configure_cpu(cfg.run)
        seed_everything(cfg.run.seed)  # identical model init on every rank
        self._build_data()
        self._build_model()
        self.start_step, self.skipped = 0, 0
        self.ckpt_source: Path | None = None
        if resume:
            self._load_resume_state()
        # per-rank randomness for augmentation (after the identical init)
        if not resume:
            seed_everything(cfg.run.seed + 1000 * self.rank + 1)

    # ----------------------------------------------------------------- building
    def _build_data(self) -> None:
        from sslkit.augment import views_from_config
        from sslkit.data import TrainSampler, build_loader, dataset_from_config

        cfg = self.cfg
        self.train_set = dataset_from_config(cfg.data, "pretrain", seed=cfg.run.seed)
        n = len(self.train_set)
        per_rank = n // self.world
        self.steps_per_epoch = per_rank // self.local_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the "
                              f"{n} training images of {cfg.data.name}; lower train.batch_size")
        self.sampler = TrainSampler(n, seed=cfg.run.seed, rank=self.rank, world_size=self.world,
                                    drop_last=True)
        self.loader = build_loader(self.train_set, self.local_batch, train=True,
                                   sampler=self.sampler, num_workers=cfg.data.num_workers,
                                   pin_memory=self.device.type == "cuda", seed=cfg.run.seed)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.views = views_from_config(cfg).to(self.device)
        self.knn_sets = None
        if cfg.eval.knn_every > 0:
            self.knn_sets = (dataset_from_config(cfg.data, "train", seed=cfg.run.seed),
                             dataset_from_config(cfg.data, "test", seed=cfg.run.seed))

    def _build_model(self) -> None:
        from sslkit.methods import build_method
        from sslkit.optim import build_optimizer, build_scheduler

        cfg = self.cfg
        method = build_method(cfg)
        if self.distributed and cfg.method.sync_bn:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        method = method.to(self.device)
        if cfg.run.channels_last:
            method = method.to(memory_format=torch.channels_last)
        self.method = method
        self.model = method
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(method, device_ids=ids)
        self.optimizer = build_optimizer(method, cfg.optim, cfg.train.batch_size)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps,
                                         self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _load_resume_state(self) -> None:
        ckpt, source = load_checkpoint_with_fallback(self.run_dir / "checkpoints" / "last.pt")
        notes = compare_resume_config(ckpt["config"], self.cfg, source)
        if self.main and notes:
            print("note: resuming with changed keys: " + "; ".join(notes), flush=True)
        from sslkit.checkpoint import load_into
        load_into(self.method, ckpt["model"], str(source), what="method")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_step = int(ckpt["step"])
        self.skipped = int(ckpt.get("skipped_steps", 0))
        rngs = ckpt["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self.ckpt_source = source

    # ----------------------------------------------------------------- checkpoints
    def state(self, step: int) -> dict:
        rngs = [rng_state()]
        if self.distributed:  # every rank's RNG, so each resumes its own stream
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        return {"format": "sslkit", "version": 1, "model": self.method.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": step // self.steps_per_epoch, "step": step,
                "data": {"epoch": step // self.steps_per_epoch,
                         "batch_in_epoch": step % self.steps_per_epoch,
                         "steps_per_epoch": self.steps_per_epoch, "seed": self.cfg.run.seed},
                "skipped_steps": self.skipped, "config": self.cfg.to_dict(), "rng": rngs}

    def save_checkpoint(self, step: int) -> None:
        if not params_finite(self.method):
            raise TrainingDiverged(f"non-finite weights at step {step}; no checkpoint written, "
                                   f"the last finite one is kept; lower optim.lr")
        state = self.state(step)  # collective under DDP: every rank takes part
        if self.main:
            save_atomic(state, self.run_dir / "checkpoints" / "last.pt")
        dist_utils.barrier()

    # ----------------------------------------------------------------- monitoring
    @torch.no_grad()
    def knn_monitor(self) -> dict:
        """kNN top-1/top-5 of the backbone's features: train-split bank, test-split queries."""
        from linear_eval.features import extract_features
        from sslkit.augment import eval_transform_from_config
        from sslkit.data import build_loader
        from sslkit.knn import knn_accuracy

        cfg = self.cfg
        bank, test = self.knn_sets
        if cfg.eval.knn_bank_size and cfg.eval.knn_bank_size < len(bank):
            g = torch.Generator().manual_seed(cfg.run.seed)
            bank = bank.subset(torch.randperm(len(bank), generator=g)[:cfg.eval.knn_bank_size])
        tf = eval_transform_from_config(cfg).to(self.device)
        feats = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for ds in (bank, test):
                loader = build_loader(ds, cfg.eval.batch_size, train=False,
                                      num_workers=cfg.data.num_workers,
                                      pin_memory=self.device.type == "cuda")
                feats.append(extract_features(self.method.backbone, loader, self.device,
                                              self.precision, transform=tf,
                                              batch_size=cfg.eval.batch_size))
        (fb, yb), (ft, yt) = feats
        num_classes = int(max(yb.max(), yt.max())) + 1
        top1, top5 = knn_accuracy(fb, yb, ft, yt, num_classes, k=cfg.eval.knn_k,
                                  temperature=cfg.eval.knn_t)
        return {"knn_top1": round(top1, 3), "knn_top5": round(top5, 3)}

    def aug_grid(self, log: MetricsLog, step: int) -> None:
        if not (self.main and self.cfg.run.tensorboard):
            return
        from sslkit.augment import augmentation_grid

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            images = torch.stack([self.train_set[i][0] for i in range(8)]).to(self.device)
            log.image("augment/original_view1_view2", augmentation_grid(images, self.views, n=8),
                      step)

    # ----------------------------------------------------------------- training
    def fit(self, stop_after_steps: int | None = None) -> Summary:
        cfg, main = self.cfg, self.main
        if main and not self.resume:
            if self.overwrite:
                clear_run_dir(self.run_dir)
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            from sslkit.config import save
            save(cfg, self.run_dir / "config.yaml")
        if main:  # temporary files of a checkpoint write that was killed halfway
            for stale in (self.run_dir / "checkpoints").glob(".*.tmp-*"):
                stale.unlink()
        dist_utils.barrier()
        log = MetricsLog(self.run_dir, main, cfg.run.tensorboard, self.start_step)
        step, t_start = self.start_step, time.time()
        last_loss, knn = None, None
        if step == 0:
            self.aug_grid(log, 0)
        bar = None
        if main and cfg.run.progress:
            from tqdm import tqdm
            bar = tqdm(total=self.total_steps, initial=step, unit="step", dynamic_ncols=True,
                       file=sys.stdout, mininterval=1.0, desc="pretrain")
        finished, final = False, {}
        try:
            last_loss, knn = self._loop(log, bar, step, stop_after_steps)
            step = self._step
            finished = step >= self.total_steps
            backbone_path = None
            if finished and main:
                from sslkit.export import backbone_state_dict
                backbone_path = self.run_dir / "backbone.pt"
                save_atomic(backbone_state_dict(self.method.state_dict()), backbone_path,
                            keep_previous=False)
            final = {"loss": last_loss, **(knn or {})} if last_loss is not None else {}
        finally:
            if bar is not None:
                bar.close()
            log.close(self._hparams() if finished else None, final)
        dist_utils.barrier()
        return Summary(str(self.run_dir), step, step // self.steps_per_epoch, last_loss,
                       knn["knn_top1"] if knn else None, time.time() - t_start, self.skipped,
                       str(backbone_path) if backbone_path else None)

    def _hparams(self) -> dict:
        c = self.cfg
        return {"method": c.method.name, "backbone": c.model.backbone, "width": c.model.width,
                "batchformer": c.batchformer.enabled, "dataset": c.data.name,
                "epochs": c.train.epochs, "batch_size": c.train.batch_size,
                "lr": c.optim.lr, "optimizer": c.optim.name,
                "temperature": float(c.method.temperature)}

    def _loop(self, log: MetricsLog, bar, step: int, stop_after: int | None):
        from sslkit.methods import cosine_momentum

        cfg, dev = self.cfg, self.device
        spe = self.steps_per_epoch
        every_ckpt = cfg.train.checkpoint_every_steps
        last_loss, knn = None, None
        t_log, n_log = time.time(), 0
        self._step = step
        self.method.train()
        while step < self.total_steps:
            epoch, offset = divmod(step, spe)
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(offset, self.local_batch)
            for images, _ in self.loader:
                images = images.to(dev, non_blocking=True)
                view1, view2 = self.views(images)
                if cfg.run.channels_last:
                    view1 = view1.contiguous(memory_format=torch.channels_last)
                    view2 = view2.contiguous(memory_format=torch.channels_last)
                with autocast(dev, self.precision):
                    loss, stats = self.model(view1, view2)
                # the mean over ranks: a NaN anywhere stops (or skips) every rank alike
                loss_value = float(dist_utils.all_reduce_mean(loss.detach().float()))
                if not math.isfinite(loss_value):
                    if cfg.train.nan_policy == "stop":
                        raise TrainingDiverged(
                            f"loss is {loss_value} at step {step + 1} (epoch {epoch + 1}); "
                            f"stopped with the last finite checkpoint kept; lower optim.lr or "
                            f"set train.nan_policy=skip")
                    self.skipped += 1
                    self.optimizer.zero_grad(set_to_none=True)
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    if cfg.optim.grad_clip is not None:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.method.parameters(), cfg.optim.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                m = (cosine_momentum(step, self.total_steps, cfg.method.momentum)
                     if cfg.method.momentum_schedule == "cosine" else cfg.method.momentum)
                self.method.momentum_update(m)
                step += 1
                self._step = step
                n_log += images.shape[0] * self.world
                last_loss = loss_value
                if bar is not None:
                    bar.update(1)
                if step % cfg.run.log_every_steps == 0 or step == self.total_steps:
                    dt = max(time.time() - t_log, 1e-9)
                    rec = {"step": step, "epoch": round(step / spe, 4),
                           "loss": loss_value,
                           "lr": lr, "momentum": m, "img_per_s": round(n_log / dt, 2)}
                    rec.update({k: float(dist_utils.all_reduce_mean(v.detach().float()))
                                for k, v in stats.items()})
                    if self.skipped:
                        rec["skipped_steps"] = self.skipped
                    log.write(rec, "train")
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['img_per_s']:.0f}")
                    t_log, n_log = time.time(), 0
                epoch_end = step % spe == 0 or step == self.total_steps
                if epoch_end:
                    ep = math.ceil(step / spe)
                    if self.knn_sets is not None and cfg.eval.knn_every and (
                            ep % cfg.eval.knn_every == 0 or step == self.total_steps):
                        if self.main:
                            knn = self.knn_monitor()
                            log.write({"step": step, "epoch": ep, **knn}, "knn")
                            if bar is not None:
                                bar.write(f"epoch {ep}: kNN top-1 {knn['knn_top1']:.2f}%")
                        dist_utils.barrier()
                        self.method.train()
                    if cfg.run.aug_grid_every and ep % cfg.run.aug_grid_every == 0:
                        self.aug_grid(log, step)
                if epoch_end or (every_ckpt and step % every_ckpt == 0):
                    self.save_checkpoint(step)
                if step >= self.total_steps or (stop_after is not None and step >= stop_after):
                    return last_loss, knn
        return last_loss, knn


def pretrain(cfg: Config, resume: bool = False, overwrite: bool = False,
             stop_after_steps: int | None = None) -> Summary:
    """Run (or resume) pretraining as configured; prints the config and a final summary.

    ``stop_after_steps`` stops early without changing the schedule (tests, benchmarks).
    """
    if dist_utils.is_main_process():
        print(cfg.to_yaml(), end="", flush=True)
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    if trainer.main and trainer.ckpt_source is not None:
        print(f"resuming from {trainer.ckpt_source} at step {trainer.start_step}", flush=True)
    try:
        summary = trainer.fit(stop_after_steps=stop_after_steps)
    finally:
        dist_utils.destroy_distributed()
    if trainer.main:
        print_summary(summary)
    return summary


def print_summary(s: Summary) -> None:
    run = Path(s.run_dir)
    lines = [f"done: {s.steps} steps ({s.epochs_done} epochs) in {s.seconds / 60:.1f} min"
             + (f", final loss {s.final_loss:.4f}" if s.final_loss is not None else "")
             + (f", online kNN top-1 {s.knn_top1:.2f}%" if s.knn_top1 is not None else "")]
    if s.skipped_steps:
        lines.append(f"  skipped non-finite steps: {s.skipped_steps}")
    lines += [f"  run directory: {run}", f"  config:        {run / 'config.yaml'}",
              f"  metrics:       {run / 'metrics.jsonl'}",
              f"  checkpoint:    {run / 'checkpoints' / 'last.pt'}"]
    if s.backbone:
        lines.append(f"  backbone:      {s.backbone}")
    lines.append(f"  TensorBoard:   tensorboard --logdir {run / 'tb'} --host 127.0.0.1")
    print("\n".join(lines), flush=True)
