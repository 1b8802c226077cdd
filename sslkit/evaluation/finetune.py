"""The ``run_finetune.py`` driver: end-to-end fine-tuning of a pretrained backbone (or of the
same network at random init) with a linear head, on all or a few of the training labels, then
top-1 / top-5 on the test split.

1. :mod:`sslkit.evaluation.finetune_setup`: config, data, output directory;
   :mod:`sslkit.evaluation.classifier`: network, optimizer, schedule, loss, the step.
2. The loop: ``finetune.epochs`` epochs of ``ceil(labelled images / batch)`` steps, under
   torchrun with DDP (every process its rows of each global batch), a test evaluation every
   ``finetune.eval_every`` epochs and at the end (``best_top1`` is the best of them, DeiT's
   "max accuracy"; ``top1`` is the final one, the number to report).
3. The run's own files in ``<output>/finetune/``: ``config.yaml``, ``metrics.jsonl``
   (training lines ``step``, ``epoch``, ``loss``, ``lr``, ``img_per_s``; evaluation lines
   ``top1``, ``top5``), ``tb/``, ``checkpoints/last.pt`` (every epoch, every
   ``finetune.checkpoint_every_steps``, and at SIGTERM / SIGUSR1, which then end the run with
   128 + the signal's number). The same command again resumes exactly (model, optimizer,
   schedule, data order, every process's random state), says "already finished" when done,
   and refuses a directory that holds the fine-tuning of another checkpoint or recipe.
4. ``<output>/finetune.json``: ``top1``, ``top5``, ``best_top1`` (percent), ``train_images``,
   the labels used, the recipe, the per-evaluation ``history``, timings and the config.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from sslkit import config as config_mod
from sslkit import distributed as dist
from sslkit.data import build_loader, close_loader
from sslkit.errors import CheckpointError, ConfigError, UserError
from sslkit.evaluation.classifier import (FinetuneStep, build_classifier, build_criterion,
                                          build_mixup, build_optimizer, build_scheduler)
from sslkit.evaluation.finetune_setup import (build_data, check_command, finetune_config,
                                              output_dir)
from sslkit.io.checkpoint import (PREV_NAME, load_checkpoint_with_fallback, load_into,
                                  save_atomic, training_state)
from sslkit.io.rundir import flatten
from sslkit.knn import topk_correct
from sslkit.train.lifecycle import (Lifecycle, StopSignals, agree, agree_on,
                                    explain_lost_process, together)
from sslkit.train.metrics import TB_EVAL, TB_TRAIN, MetricsLog, Progress, tool
from sslkit.train.optim import linear_scaled
from sslkit.train.runtime import (autocast, choose_precision, configure_cpu, fork_rng,
                                  params_finite, resolve_device, rng_state, seed_everything,
                                  set_rng_state)
from sslkit.train.step import TrainingDiverged

# keys that do not change what a fine-tuning run computes: a resumed run may differ in them
_FREE_KEYS = ("finetune.eval_every", "finetune.checkpoint_every_steps", "data.num_workers",
              "data.root", "data.download")
_WHAT_IS_TRAINED = ("data.", "model.", "finetune.", "run.seed")


class FinetuneRun:
    """Everything a fine-tuning run needs, built and checked before anything is written."""

    def __init__(self, checkpoint: Optional[str], config_path: Optional[str],
                 overrides: Optional[list[str]], baseline: Optional[str],
                 output: Optional[str]):
        check_command(checkpoint, baseline)
        cfg, src = finetune_config(checkpoint, config_path, overrides)
        self.cfg, ft = cfg, cfg.finetune
        configure_cpu(cfg.run)
        self.device = resolve_device(cfg.run)
        choice = choose_precision(cfg.run, self.device)
        self.distributed = dist.init_distributed(self.device.type, cfg.run.dist_timeout_s)
        if self.distributed:  # one precision for every rank: rank 0's probe decides
            choice = dist.broadcast_object(choice)
        self.precision, self.precision_choice = choice.precision, choice
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.main = self.rank == 0
        if self.distributed and ft.sync_bn and self.device.type != "cuda":
            raise ConfigError("finetune.sync_bn=true needs CUDA devices under torchrun "
                              "(SyncBatchNorm has no CPU kernel); set finetune.sync_bn=false")
        self.out_dir = output_dir(checkpoint, baseline, output, src.run_dir if src else None, cfg)
        self.run_dir = self.out_dir / "finetune"
        together(lambda: self.main and _check_writable(self.out_dir))
        seed_everything(cfg.run.seed)  # the same initialisation on every process
        self.data = data = build_data(cfg, self.device, self.rank, self.world)
        state = src.state if src is not None and baseline is None else None
        model = build_classifier(cfg, state, str(checkpoint), data.num_classes).to(self.device)
        if self.distributed and ft.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.ddp: nn.Module = model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.steps_per_epoch = data.steps_per_epoch
        self.total_steps = ft.epochs * data.steps_per_epoch
        self.optimizer = build_optimizer(model, ft)
        self.scheduler = build_scheduler(self.optimizer, ft, self.total_steps,
                                         self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        mixup = build_mixup(ft, data.num_classes)
        self.step_fn = FinetuneStep(self.ddp, self.optimizer, self.scheduler, self.scaler,
                                    build_criterion(ft, mixup is not None), self.device,
                                    self.precision, data.transform, mixup, ft.grad_clip)
        self.identity = {"checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
                         "baseline": baseline}
        self.step, self.saved_at, self.history = 0, None, []
        self.resumed_from: Optional[Path] = None
        together(self._resume)
        if self.resumed_from is None:  # per-process randomness of the views (after the init)
            seed_everything(cfg.run.seed + 1000 * self.rank + 1)
        agree_on(self.step, "the step the fine-tuning resumes from")

    # ----------------------------------------------------------------- resume
    def _resume(self) -> None:
        last = self.run_dir / "checkpoints" / "last.pt"
        if not (last.exists() or last.with_name(PREV_NAME).exists()):
            return
        ckpt, source = load_checkpoint_with_fallback(last)
        info = ckpt.get("finetune") or {}
        if info.get("identity") != self.identity:
            raise UserError(f"'{self.run_dir}' holds the fine-tuning of another model "
                            f"({_what(info.get('identity'))}); pass --output DIR for this one, "
                            f"or remove that folder to start again")
        saved, given = flatten(ckpt["config"]), flatten(self.cfg.to_dict())
        for key in sorted(given):
            if (key.startswith(_WHAT_IS_TRAINED) and key not in _FREE_KEYS
                    and saved.get(key, given[key]) != given[key]):
                raise UserError(f"'{self.run_dir}' holds a fine-tuning run with {key}="
                                f"{saved[key]!r} (this one: {given[key]!r}); pass --output DIR "
                                f"for this one, or remove that folder to start again")
        if ckpt.get("data", {}).get("steps_per_epoch") != self.steps_per_epoch:
            raise UserError(f"cannot resume from '{source}': it was written at "
                            f"{ckpt.get('data', {}).get('steps_per_epoch')} steps per epoch and "
                            f"this run has {self.steps_per_epoch} (the labelled images or the "
                            f"number of processes changed)")
        load_into(self.model, ckpt["model"], str(source), what="fine-tuning model")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"cannot resume from '{source}': its optimizer state does "
                                  f"not fit ({e}); remove {self.run_dir} to start "
                                  f"again") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = self.saved_at = int(ckpt["step"])
        self.history = list(info.get("history", []))
        rngs = ckpt["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self.resumed_from = source

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        if not params_finite(self.model):
            raise TrainingDiverged(f"non-finite weights at step {self.step}; no checkpoint "
                                   f"written; lower finetune.lr")
        rngs = [rng_state()]
        if self.distributed:  # every rank's RNG, so each resumes its own stream
            rngs = dist.all_gather_object(rngs[0])
        state = training_state(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
            step=self.step, steps_per_epoch=self.steps_per_epoch, seed=self.cfg.run.seed,
            skipped_steps=0, config=self.cfg.to_dict(), rng=rngs)
        state["finetune"] = {"identity": self.identity, "history": self.history,
                             "train_images": len(self.data.train)}
        last = self.run_dir / "checkpoints" / "last.pt"
        together(lambda: self.main and save_atomic(state, last))
        self.saved_at = self.step

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Top-1 / top-5 (percent) on the test split's centre view; each process scores
        every W-th image, the counts are summed."""
        test = self.data.test
        if self.world > 1:
            test = test.subset(torch.arange(self.rank, len(test), self.world))
        loader = build_loader(test, self.cfg.eval.batch_size, train=False,
                              num_workers=self.cfg.data.num_workers,
                              pin_memory=self.device.type == "cuda")
        counts = torch.zeros(3, dtype=torch.float64)
        self.model.eval()
        try:
            with fork_rng(self.device):
                for images, labels in loader:
                    x = self.data.eval_transform(images.to(self.device, non_blocking=True))
                    with autocast(self.device, self.precision):
                        logits = self.model(x)
                    h1, h5 = topk_correct(logits.float(), labels)
                    counts += torch.tensor([h1, h5, labels.shape[0]], dtype=torch.float64)
        finally:
            close_loader(loader)
        self.model.train()
        if self.world > 1:
            counts = dist.all_reduce_sum(counts.to(self.device)).cpu()
        n = max(1.0, float(counts[2]))
        return 100.0 * float(counts[0]) / n, 100.0 * float(counts[1]) / n

    # ----------------------------------------------------------------- training
    def fit(self, stop_after_steps: Optional[int] = None) -> int:
        """Train to the end (or to ``stop_after_steps``, or a stop signal, after a checkpoint);
        returns the stop signal's number or 0."""
        cfg = self.cfg
        if self.main:
            _open_run_dir(self.run_dir, cfg, new=self.resumed_from is None)
        dist.barrier()
        log = MetricsLog(self.run_dir, self.main, cfg.run.tensorboard, self.step)
        bar = Progress(self.total_steps, self.step, self.main and cfg.run.progress,
                       desc="finetune")
        signals = StopSignals().install()
        try:
            return self._train(log, bar, Lifecycle(None, self.device, self.main, signals),
                               stop_after_steps)
        finally:
            signals.restore()
            bar.close()
            log.close()
            close_loader(self.data.loader)

    def _batches(self):
        """``(batch or None at the end of the epoch, verdict)`` from :attr:`step` on."""
        epoch, offset = divmod(self.step, self.steps_per_epoch)
        self.data.sampler.set_epoch(epoch)
        self.data.sampler.set_start(offset, self.data.local_batch)
        batches, batch = iter(self.data.loader), ()
        while batch is not None:
            try:
                batch, problem = next(batches, None), None
            except UserError as e:  # e.g. an undecodable image: every process ends with it
                batch, problem = None, e
            verdict = self.life.poll(failed=problem is not None)
            if verdict.failed:
                try:
                    agree(problem)
                finally:  # no cycle error -> traceback -> this frame -> error: the loader's
                    problem = None  # workers (which ignore SIGTERM) end before the exit
            yield batch, verdict

    def _train(self, log: MetricsLog, bar: Progress, life: Lifecycle,
               stop_after: Optional[int]) -> int:
        cfg, ft, spe = self.cfg, self.cfg.finetune, self.steps_per_epoch
        self.life = life
        self.model.train()
        t_log, n_log = time.time(), 0
        while self.step < self.total_steps:
            for batch, verdict in self._batches():
                if verdict.stop:
                    if self.saved_at != self.step:
                        self.save_checkpoint()
                    return verdict.stop
                if batch is None:
                    break
                images, labels = batch
                loss, lr = self.step_fn(images, labels, self.step)
                self.step += 1
                n_log += labels.shape[0] * self.world
                bar.update(1)
                if self.step % cfg.run.log_every_steps == 0 or self.step == self.total_steps:
                    rec = {"step": self.step, "epoch": round(self.step / spe, 4),
                           "loss": float(dist.all_reduce_mean(loss.float())), "lr": lr,
                           "img_per_s": round(n_log / max(time.time() - t_log, 1e-9), 2)}
                    log.write(rec, TB_TRAIN)
                    bar.log(rec)
                    t_log, n_log = time.time(), 0
                epoch_end = self.step % spe == 0
                if epoch_end and (self.step == self.total_steps or (
                        ft.eval_every and (self.step // spe) % ft.eval_every == 0)):
                    top1, top5 = self.evaluate()
                    row = {"step": self.step, "epoch": self.step // spe, "top1": top1,
                           "top5": top5}
                    self.history.append(row)
                    log.write(row, TB_EVAL)
                    bar.write(f"epoch {row['epoch']}: test top-1 {top1:.2f}  top-5 {top5:.2f}")
                if epoch_end or (ft.checkpoint_every_steps
                                 and self.step % ft.checkpoint_every_steps == 0):
                    self.save_checkpoint()
                if self.step >= self.total_steps or (stop_after is not None
                                                     and self.step >= stop_after):
                    if self.saved_at != self.step:
                        self.save_checkpoint()
                    return 0
        return 0

    # ----------------------------------------------------------------- report
    def result(self, seconds: float) -> dict:
        cfg, data = self.cfg, self.data
        final = self.history[-1]
        best = max(self.history, key=lambda r: r["top1"])
        counts = torch.bincount(data.train.labels, minlength=data.num_classes).tolist()
        return {
            "top1": final["top1"], "top5": final["top5"], "best_top1": best["top1"],
            "best_epoch": best["epoch"], "train_images": len(data.train),
            "labels": {"label_fraction": cfg.finetune.label_fraction,
                       "subset_file": cfg.finetune.subset_file,
                       "classes": [str(c) for c in data.classes], "per_class": counts},
            "recipe": {**dataclasses.asdict(cfg.finetune),
                       "effective_lr": linear_scaled(cfg.finetune.lr, cfg.finetune.batch_size),
                       "steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch},
            "history": self.history, **self.identity,
            "dataset": {"name": cfg.data.name, "num_test": len(data.test),
                        "num_classes": data.num_classes, "image_size": cfg.data.image_size,
                        "channels": cfg.data.channels},
            "backbone": cfg.model.backbone, "device": str(self.device),
            "precision": self.precision, "processes": self.world,
            "timings": {"total_s": seconds}, "config": cfg.to_dict()}


def _what(identity: Optional[dict]) -> str:
    if not identity:
        return "unknown"
    return (f"baseline {identity['baseline']}" if identity.get("baseline")
            else f"checkpoint {identity.get('checkpoint')}")


def _check_writable(out: Path) -> None:
    """Refuse an output directory that is a file or cannot be created; creates nothing."""
    if out.exists() and not out.is_dir():
        raise UserError(f"the output directory {out} is a file; pass --output DIR")
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    probe = base / f".sslkit-write-probe-{os.getpid()}"
    try:  # a real write (permission bits alone mislead root and read-only mounts)
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write the output directory {out} ({e.strerror} in {base}); "
                        f"pass --output DIR") from None


def _open_run_dir(run_dir: Path, cfg: config_mod.Config, new: bool) -> None:
    """Rank 0: a new run removes what a run killed before its first checkpoint left there,
    and writes its config.yaml; every start removes half-written checkpoint files."""
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if new:
        for name in ("metrics.jsonl", "tb"):
            p = run_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        config_mod.save(cfg, run_dir / "config.yaml")
    for stale in (run_dir / "checkpoints").glob(".*.tmp-*"):
        stale.unlink()


def _write_json(obj: dict, path: Path) -> None:
    save_atomic(obj, path, keep_previous=False,
                dump=lambda o, fh: fh.write((json.dumps(o, indent=2) + "\n").encode()))


def run_finetune(checkpoint: Optional[str] = None, config_path: Optional[str] = None,
                 overrides: Optional[list[str]] = None, baseline: Optional[str] = None,
                 output: Optional[str] = None, stop_after_steps: Optional[int] = None) -> dict:
    """Fine-tune and write ``finetune.json``; returns its content, or ``{"stopped_by":
    signal}`` / ``{"stopped_at": step}`` for a run that stopped after a checkpoint
    (``stop_after_steps``: tests). Under torchrun the process group is joined here and left
    at the end, unless the caller had joined it (then it stays, for the caller's next run)."""
    t0 = time.time()
    timeout, joined = 1800, not dist.is_distributed()
    try:
        run = FinetuneRun(checkpoint, config_path, overrides, baseline, output)
        timeout = run.cfg.run.dist_timeout_s
        return _run(run, stop_after_steps, t0)
    except (RuntimeError, ConnectionError) as e:
        lost = explain_lost_process(e, timeout)
        if lost is None:
            raise
        raise lost from None
    finally:
        if joined:
            dist.destroy_distributed()


def _run(run: FinetuneRun, stop_after_steps: Optional[int], t0: float) -> dict:
    cfg, data, main = run.cfg, run.data, run.main
    path = run.out_dir / "finetune.json"
    if main:
        print(f"finetune: {run.identity['baseline'] or 'checkpoint'} on {cfg.data.name} "
              f"({len(data.train)} labelled train images, {len(data.test)} test, {data.num_classes} "
              f"classes), {cfg.model.backbone}, {run.device.type}/{run.precision}, "
              f"{run.world} process(es), {cfg.finetune.epochs} epochs of "
              f"{run.steps_per_epoch} steps", flush=True)
        print(f"compute: {run.device.type}, {run.precision} ({run.precision_choice.reason})"
              + (f"\n{run.precision_choice.note}" if run.precision_choice.note else ""),
              flush=True)
    if run.step >= run.total_steps and path.exists():
        if main:
            print(f"already finished ({run.step} steps): {path}; nothing to do", flush=True)
        return json.loads(path.read_text())
    if main and run.resumed_from is not None:
        print(f"resuming from {run.resumed_from} at step {run.step}", flush=True)
    stopped = run.fit(stop_after_steps) if run.step < run.total_steps else 0
    if stopped:
        if main:
            print(f"stopped by signal {stopped} at step {run.step}; checkpoint saved; the same "
                  f"command continues", flush=True)
        return {"stopped_by": stopped}
    if run.step < run.total_steps:
        return {"stopped_at": run.step}
    if not run.history or run.history[-1]["step"] != run.step:  # finished, not yet scored
        top1, top5 = run.evaluate()
        run.history.append({"step": run.step, "epoch": run.step // run.steps_per_epoch,
                            "top1": top1, "top5": top5})
    result = run.result(time.time() - t0)
    if main:
        together(lambda: _write_json(result, path))
        best = f" (best {result['best_top1']:.2f} at epoch {result['best_epoch']})" \
            if result["best_top1"] != result["top1"] else ""
        print(f"  fine-tuned on {result['train_images']} labelled images: test top-1 "
              f"{result['top1']:.2f}  top-5 {result['top5']:.2f}{best}", flush=True)
        print(f"  wrote {path}; TensorBoard: {tool('tensorboard')} --logdir "
              f"{run.run_dir / 'tb'} --host 127.0.0.1", flush=True)
    else:
        together(lambda: None)
    return result
