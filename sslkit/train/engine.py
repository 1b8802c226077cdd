"""The pretraining loop: builds data, views, method and optimizer from a Config, then trains,
logs, monitors and checkpoints.

One step: loader (CPU, uint8) -> device -> two views (kornia, on the device) -> method ->
loss -> backward -> optimizer step -> LR schedule -> momentum update -> log. Every
``eval.knn_every`` epochs an online kNN on backbone features; a checkpoint every epoch and
every ``train.checkpoint_every_steps`` and ``train.checkpoint_every_minutes`` (atomic), and
``backbone.pt`` at the end. SIGTERM / SIGUSR1 end the run after a checkpoint of the step it
reached, every torchrun process at the same step (:mod:`sslkit.train.lifecycle`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
from torch.profiler import record_function

from sslkit import distributed as dist_utils
from sslkit.config import Config
from sslkit.data import close_loader, dataset_from_config
from sslkit.errors import CheckpointError, ConfigError, RunCollapsed, UserError
from sslkit.export import backbone_state_dict
from sslkit.io.checkpoint import (load_checkpoint_with_fallback, load_into, save_atomic,
                                  training_state)
from sslkit.io.rundir import check_run_dir, compare_resume_config, open_run_dir
from sslkit.methods.resolve import feature_dim, resolved, resolved_pair
from sslkit.train.health import Health
from sslkit.train.lifecycle import (Lifecycle, StopSignals, Verdict, agree, agree_on,
                                    explain_lost_process, signal_name, together)
from sslkit.train.metrics import (TB_HEALTH, TB_ONLINE, TB_TRAIN, MetricsLog, Progress,
                                  Summary, hparam_columns, hparams, print_summary)
from sslkit.train.model import training_model
from sslkit.train.online_probe import OnlineProbe, online_knn
from sslkit.train.optim import build_optimizer, build_scheduler, warmup_steps
from sslkit.train.runtime import (choose_precision, configure_cpu, fork_rng, params_finite,
                                  resolve_device, rng_state, seed_everything, set_rng_state,
                                  share_cores_with_workers)
from sslkit.train.spikes import Rollback, SpikeGuard
from sslkit.train.step import StepResult, TrainingDiverged, TrainStep
from sslkit.views.grid import augmentation_grid
from sslkit.views.pipeline import build_pretrain_input


class Trainer:
    """Builds everything from a Config, then runs (or resumes) pretraining."""

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False):
        # every default written out (what config.yaml says): the config the CLI resolved is
        # taken as it is; one built in Python is resolved here, once
        cfg = self.cfg = resolved(cfg)
        self.resume, self.overwrite = resume, overwrite or cfg.run.overwrite
        self.run_dir = Path(cfg.run.output_dir)
        # 1. everything that can refuse the input, before anything is written
        self.device = resolve_device(cfg.run)
        choice = choose_precision(cfg.run, self.device)
        self.distributed = dist_utils.init_distributed(self.device.type,
                                                       cfg.run.dist_timeout_s)
        if self.distributed:  # one precision for every rank: rank 0's probe decides
            choice = dist_utils.broadcast_object(choice)
        self.precision, self.precision_choice = choice.precision, choice
        self.rank, self.world = dist_utils.get_rank(), dist_utils.get_world_size()
        self.main = self.rank == 0
        if self.distributed and cfg.method.sync_bn and self.device.type != "cuda":
            raise ConfigError("method.sync_bn=true needs CUDA devices under torchrun "
                              "(SyncBatchNorm has no CPU kernel); on the CPU set "
                              "--set method.sync_bn=false")
        if cfg.train.batch_size % self.world:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} (the global batch) must "
                              f"be divisible by the {self.world} processes")
        self.local_batch = cfg.train.batch_size // self.world
        # a user error on one rank (a refused directory, missing data) stops every rank
        together(lambda: self.main and check_run_dir(self.run_dir, resume, self.overwrite))
        configure_cpu(cfg.run)
        seed_everything(cfg.run.seed)  # identical model init on every rank
        together(self._build_data)
        self._build_model()
        self.start_step = self.step = 0  # steps done (self.step advances with train_step)
        self.ckpt_source: Path | None = None
        self.saved_at: int | None = None  # the step of the checkpoint on disk, if known
        self.signals = StopSignals()  # installed while fit() runs
        self.life = Lifecycle(cfg.train.checkpoint_every_minutes, self.device, self.main,
                              self.signals)
        self.stepper = TrainStep(cfg, self.method, self.model, self.optimizer, self.scheduler,
                                 self.scaler, self.input.to_views, self.device,
                                 self.precision, self.total_steps, self.steps_per_epoch,
                                 self.probe)
        # the collapse signals and alarm, the loss-spike rollback (docs/monitoring.md)
        self.health = Health(feature_dim(cfg), self.local_batch)
        self.spikes = SpikeGuard(cfg.train, self.method, self.optimizer, self.scheduler,
                                 self.scaler, self.stepper, self.probe,
                                 warmup_steps(cfg.optim, self.steps_per_epoch)
                                 + self.method.settling_steps(cfg.train.batch_size))
        if resume:
            together(self._load_resume_state)
        else:  # per-rank randomness for augmentation (after the identical init)
            seed_everything(cfg.run.seed + 1000 * self.rank + 1)
        agree_on(self.start_step, "the step the run starts from")

    # ----------------------------------------------------------------- building
    def _build_data(self) -> None:
        cfg = self.cfg
        self.input = build_pretrain_input(cfg, self.device, self.rank, self.world,
                                          self.local_batch)
        share_cores_with_workers(cfg.run, self.device, getattr(self.input.loader, "num_workers", 0))
        self.train_set, self.sampler = self.input.base, self.input.sampler
        n = len(self.train_set)
        self.steps_per_epoch = (n // self.world) // self.local_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the "
                              f"{n} training images of {cfg.data.name}; lower train.batch_size")
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.knn_sets = None
        if cfg.eval.knn_every > 0 and getattr(self.train_set, "num_classes", 0) >= 2:
            self.knn_sets = (dataset_from_config(cfg.data, "train", seed=cfg.run.seed),
                             dataset_from_config(cfg.data, "test", seed=cfg.run.seed))
        elif cfg.eval.knn_every > 0 and self.main:  # a folder of unlabelled photos
            print("note: the training images have no labels: no online kNN", flush=True)

    def _build_model(self) -> None:
        cfg = self.cfg
        built = training_model(cfg, self.device, self.distributed, self.local_batch, self.world)
        self.method, self.model, self.model_lines = built.method, built.model, built.lines
        method = self.method
        self.probe = None
        if cfg.eval.online_probe:
            classes = int(getattr(self.train_set, "num_classes", 0) or 0)
            if classes < 2:
                raise ConfigError("eval.online_probe needs labelled training images (class "
                                  "folders); set eval.online_probe=false")
            self.probe = OnlineProbe(feature_dim(cfg), classes, cfg.eval.online_probe_lr,
                                     cfg.train.batch_size, self.device, seed=cfg.run.seed)
        self.optimizer = build_optimizer(method, cfg.optim, cfg.train.batch_size)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps,
                                         self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _load_resume_state(self) -> None:
        ckpt, source = load_checkpoint_with_fallback(self.run_dir / "checkpoints" / "last.pt")
        saved, given = resolved_pair(ckpt["config"], self.cfg, str(source))
        notes = compare_resume_config(saved if isinstance(saved, dict) else saved.to_dict(),
                                      given.to_dict(), source)
        saved_spe = ckpt.get("data", {}).get("steps_per_epoch", self.steps_per_epoch)
        if saved_spe != self.steps_per_epoch:
            raise UserError(f"cannot resume from '{source}': it was written at {saved_spe} "
                            f"steps per epoch and this run has {self.steps_per_epoch} (the "
                            f"training set or the number of processes changed); resume with "
                            f"the run's own data and process count")
        if self.main and notes:
            print("note: resuming with changed keys: " + "; ".join(notes), flush=True)
        load_into(self.method, ckpt["model"], str(source), what="method")
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:  # e.g. another grouping of the parameters
            raise CheckpointError(f"cannot resume from '{source}': its optimizer state does not "
                                  f"fit this run's optimizer ({e}); it was written by another "
                                  f"sslkit version or recipe: start a new run") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.probe is not None and "online_probe" in ckpt:
            self.probe.load_state_dict(ckpt["online_probe"])
        self.start_step = self.step = self.saved_at = int(ckpt["step"])
        self.stepper.skipped = int(ckpt.get("skipped_steps", 0))
        self.spikes.load_state_dict(ckpt.get("spikes"))
        stop = self.cfg.train.on_collapse == "stop"
        self.health.load_state_dict(ckpt.get("health"), rearm=stop)
        if self.main and self.health.alarm is not None:
            then = ("train.on_collapse=stop watches for it again from here" if stop else
                    "it goes off once per run, so the run trains on")
            print(f"note: this run's collapse alarm went off before ({self.health.alarm}); "
                  f"{then}", flush=True)
        rngs = ckpt["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self.ckpt_source = source

    # ----------------------------------------------------------------- checkpoints
    def state(self, step: int) -> dict:
        """The run's state after ``step`` steps, as ``last.pt`` holds it
        (:func:`sslkit.io.checkpoint.training_state`); a collective under DDP."""
        rngs = [rng_state()]
        if self.distributed:  # every rank's RNG, so each resumes its own stream
            gathered: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        return training_state(
            model=self.method.state_dict(), optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(), step=step,
            steps_per_epoch=self.steps_per_epoch, seed=self.cfg.run.seed,
            skipped_steps=self.stepper.skipped, config=self.cfg.to_dict(), rng=rngs,
            online_probe=self.probe.state_dict() if self.probe is not None else None,
            spikes=self.spikes.state_dict(), health=self.health.state_dict())

    def save_checkpoint(self, step: int) -> None:
        if not params_finite(self.method):
            raise TrainingDiverged(f"non-finite weights at step {step}; no checkpoint written, "
                                   f"the last finite one is kept; lower optim.lr")
        state = self.state(step)  # collective under DDP: every rank takes part
        last = self.run_dir / "checkpoints" / "last.pt"
        together(lambda: self.main and save_atomic(state, last))  # rank 0 writes, all wait
        self.saved_at = step
        self.life.restart_clock()

    # ----------------------------------------------------------------- monitoring
    def aug_grid(self, log: MetricsLog, step: int) -> None:
        """Eight training images and their two views (the preview's grid) in TensorBoard."""
        if not (self.main and self.cfg.run.tensorboard):
            return
        with fork_rng(self.device):
            rows = self.input.preview(list(range(min(8, len(self.train_set)))), self.cfg.run.seed)
        log.image("augment/original_view1_view2", augmentation_grid(*rows), step)

    # ----------------------------------------------------------------- training
    def fit(self, stop_after_steps: int | None = None) -> Summary:
        cfg, main = self.cfg, self.main
        if main:
            open_run_dir(self.run_dir, cfg, new=not self.resume, overwrite=self.overwrite)
        dist_utils.barrier()
        log = MetricsLog(self.run_dir, main, cfg.run.tensorboard, self.start_step)
        t_start = time.time()
        if self.start_step == 0:
            self.aug_grid(log, 0)
        bar = Progress(self.total_steps, self.start_step, main and cfg.run.progress)
        step, last_loss, knn, finished, stopped = self.start_step, None, None, False, 0
        backbone_path = self.run_dir / "backbone.pt"
        self.signals.install()  # from here on SIGTERM / SIGUSR1 stop the run after a step
        self.life.restart_clock()
        try:
            step, last_loss, knn, stopped = self._train(log, bar, stop_after_steps)
            finished = step >= self.total_steps
            if finished:
                together(lambda: main and save_atomic(
                    backbone_state_dict(self.method.state_dict()), backbone_path,
                    keep_previous=False))
        finally:
            self.signals.restore()
            close_loader(self.input.loader)  # its workers ignore SIGTERM: end them here
            bar.close()
            log.close(hparams(cfg) if finished else None,
                      hparam_columns(self.knn_sets is not None, self.probe is not None))
        return Summary(str(self.run_dir), step, step // self.steps_per_epoch, last_loss,
                       knn["knn_top1"] if knn else None, time.time() - t_start, self.skipped,
                       str(backbone_path) if finished and main else None, stopped,
                       self.health.summary(), self.spikes.rollbacks, self.spikes.lr_factor)

    def train_step(self, images, labels: torch.Tensor) -> StepResult:
        """One optimizer step of this run on a batch from its loader (uint8 images), exactly
        as :meth:`fit` runs it (:class:`sslkit.train.step.TrainStep`); advances :attr:`step`."""
        result = self.stepper.step(images, labels, self.step)
        self.health.observe(self.method)
        self.step += 1
        return result

    def train_step_on_views(self, view1: torch.Tensor, view2: torch.Tensor,
                            labels: torch.Tensor) -> StepResult:
        """:meth:`train_step` from two views made elsewhere (a reference pipeline's, in the
        benchmarks): the same step without sslkit's augmentation."""
        result = self.stepper.step_on_views(view1, view2, labels, self.step)
        self.step += 1
        return result

    @property
    def skipped(self) -> int:
        """Non-finite steps skipped so far (``train.nan_policy: skip``)."""
        return self.stepper.skipped

    def batches(self):
        """The loader's batches from :attr:`step` on, to the end of its epoch; the wait for
        each is the profiler range ``sslkit.data``."""
        epoch, offset = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(offset, self.local_batch)
        it = iter(self.input.loader)
        while True:
            with record_function("sslkit.data"):
                batch = next(it, None)
            if batch is None:
                return
            yield batch

    def _polled_batches(self) -> Iterator[tuple[Optional[tuple], Verdict]]:
        """``(batch, verdict)`` before each step from :attr:`step` on, over the epochs: every
        rank polls (:mod:`sslkit.train.lifecycle`) once its next batch is fetched, and a rank
        whose batch failed (a user error such as a corrupt image) ends every rank with its
        line. ``batch`` is None at the end of an epoch's loader (polled there too)."""
        while self.step < self.total_steps:
            batches, batch = self.batches(), ()
            while batch is not None:
                at = self.step
                try:
                    batch, problem = next(batches, None), None
                except UserError as e:
                    batch, problem = None, e
                verdict = self.life.poll(failed=problem is not None)
                if verdict.failed:
                    agree(problem)
                yield batch, verdict
                if batch is not None and self.step != at + 1:
                    break  # a rollback moved the step back: the data order from there

    def _train(self, log: MetricsLog, bar: Progress, stop_after: int | None
               ) -> tuple[int, float | None, dict | None, int]:
        """Steps from ``start_step`` to the end (or ``stop_after``, or a stop signal); returns
        (the step reached, the last loss, the last online kNN result, the stop signal or 0).
        A stop signal or rank 0's wall clock writes a checkpoint of the step reached."""
        cfg, spe = self.cfg, self.steps_per_epoch
        every_ckpt = cfg.train.checkpoint_every_steps
        last_loss, knn = None, None
        t_log, n_log = time.time(), 0
        self.method.train()
        self.spikes.start(self.step)
        for batch, verdict in self._polled_batches():
            if (verdict.stop or verdict.checkpoint) and self.saved_at != self.step:
                self.save_checkpoint(self.step)
            if verdict.stop:
                return self.step, last_loss, knn, verdict.stop
            if batch is None:
                continue
            images, labels = batch
            result = self.train_step(images, labels)
            rollback = self.spikes.check(self.step, result.loss)
            if rollback is not None:
                self._rolled_back(log, bar, rollback)
                continue
            step = self.step
            n_log += labels.shape[0] * self.world
            last_loss = result.loss
            bar.update(1)
            if step % cfg.run.log_every_steps == 0 or step == self.total_steps:
                self._log_step(log, bar, step, result, n_log / max(time.time() - t_log, 1e-9))
                t_log, n_log = time.time(), 0
            epoch_end = step % spe == 0 or step == self.total_steps
            if epoch_end:
                knn = self._end_of_epoch(log, bar, step) or knn
            if epoch_end or (every_ckpt and step % every_ckpt == 0):
                self.save_checkpoint(step)
            if step >= self.total_steps or (stop_after is not None and step >= stop_after):
                break
        return self.step, last_loss, knn, 0

    def _log_step(self, log: MetricsLog, bar: Progress, step: int, result: StepResult,
                  img_per_s: float) -> None:
        rec = {"step": step, "epoch": round(step / self.steps_per_epoch, 4),
               "loss": result.loss, "lr": result.lr, "momentum": result.momentum,
               "img_per_s": round(img_per_s, 2)}
        health = self.health.signals()
        rec.update({k: float(dist_utils.all_reduce_mean(v.detach().float()))
                    for k, v in {**result.stats, **health}.items()})
        if self.skipped:
            rec["skipped_steps"] = self.skipped
        log.write(rec, TB_TRAIN, dict.fromkeys(health, TB_HEALTH))
        bar.log(rec)
        if self.health.check(step, rec):  # the same on every rank: averaged values
            if self.cfg.train.on_collapse == "stop":
                self.save_checkpoint(step)
                raise RunCollapsed(self.health.stop_line(step))
            if self.main:
                bar.warn(self.health.warning())

    def _rolled_back(self, log: MetricsLog, bar: Progress, rollback: Rollback) -> None:
        """A loss spike was rolled back (:mod:`sslkit.train.spikes`): the record, the step
        the run goes on from, and a checkpoint of it (the file never holds abandoned steps)."""
        log.write(rollback.record(), None)  # TensorBoard: the text entry below
        text = rollback.text(self.cfg.train.spike_factor, self.spikes.median)
        log.text(f"{TB_HEALTH}/rollback", text, rollback.step)
        if self.main:
            bar.warn(text)
        bar.update(rollback.to_step - self.step)
        self.step = rollback.to_step
        self.health.clear()
        self.save_checkpoint(self.step)

    def _end_of_epoch(self, log: MetricsLog, bar: Progress, step: int) -> dict | None:
        """Online kNN (every ``eval.knn_every`` epochs and at the end) and the augmentation
        grid; returns the kNN result when one was measured (on rank 0)."""
        cfg = self.cfg
        ep = math.ceil(step / self.steps_per_epoch)
        knn = None
        if self.probe is not None:
            stats = self.probe.epoch_stats()  # collective under DDP: every rank takes part
            if stats:
                log.write({"step": step, "epoch": ep, **stats}, TB_ONLINE)
        if self.knn_sets is not None and cfg.eval.knn_every and (
                ep % cfg.eval.knn_every == 0 or step == self.total_steps):
            measured: dict = {}
            # rank 0 alone; a data error there ends every rank with its line
            together(lambda: self.main and measured.update(online_knn(
                cfg, self.method.backbone, self.knn_sets, self.device, self.precision, self.probe)))
            if measured:
                knn = measured
                log.write({"step": step, "epoch": ep, **knn}, TB_ONLINE)
                bar.write(f"epoch {ep}: kNN top-1 {knn['knn_top1']:.2f}%")
            self.method.train()
        if cfg.run.aug_grid_every and ep % cfg.run.aug_grid_every == 0:
            self.aug_grid(log, step)
        return knn


def pretrain(cfg: Config, resume: bool = False, overwrite: bool = False,
             stop_after_steps: int | None = None, header: Sequence[str] = ()) -> Summary:
    """Run (or resume) pretraining as configured; prints ``header`` once every check has
    passed, then the progress and a final summary. Resuming a run that is already finished
    changes nothing on disk and says so.

    ``stop_after_steps`` stops early without changing the schedule (tests, benchmarks).
    A stop signal ends the run after a checkpoint with one line (``summary.stopped_by``); a
    process of a torchrun run that stops answering within ``run.dist_timeout_s``, or ends,
    raises a one-line :class:`~sslkit.errors.ProcessGroupError`.
    """
    try:
        trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
        if trainer.main:
            choice = trainer.precision_choice
            for line in [*header, f"compute: {trainer.device.type}, {choice.precision} "
                                  f"({choice.reason})", *([choice.note] if choice.note else []),
                         *trainer.model_lines]:
                print(line, flush=True)
        if trainer.start_step >= trainer.total_steps:
            if trainer.main:
                print(f"already finished ({trainer.start_step} steps): {trainer.run_dir}; "
                      f"nothing to do", flush=True)
            return Summary(str(trainer.run_dir), trainer.start_step,
                           trainer.start_step // trainer.steps_per_epoch, None, None, 0.0,
                           trainer.skipped, None)
        if trainer.main and trainer.ckpt_source is not None:
            print(f"resuming from {trainer.ckpt_source} at step {trainer.start_step}",
                  flush=True)
        summary = trainer.fit(stop_after_steps=stop_after_steps)
    except (RuntimeError, ConnectionError) as e:
        lost = explain_lost_process(e, cfg.run.dist_timeout_s)
        if lost is None:
            raise
        raise lost from None
    finally:
        dist_utils.destroy_distributed()
    if trainer.main and summary.stopped_by:
        print(f"stopped by {signal_name(summary.stopped_by)} at step {summary.steps}; "
              f"checkpoint saved; the same command with --auto-resume continues", flush=True)
    elif trainer.main:
        print_summary(summary)
    return summary
