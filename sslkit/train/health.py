"""Is the run healthy? Label-free collapse signals of the embeddings each step already
computed, and the collapse alarm (docs/monitoring.md).

Every ``run.log_every_steps`` the engine logs four signals (``metrics.jsonl`` keys, TensorBoard
group ``health/``), computed on the last batches of the run (:class:`Health` keeps detached
references to them, no copy and no extra forward pass):

* ``rankme``: RankMe (Garrido, Balestriero, Najman & LeCun, ICML 2023), the effective rank of
  the backbone's representations h (N, D): with s the singular values of h,
  ``p_k = s_k / ||s||_1 + eps`` and ``rankme = exp(-sum_k p_k log p_k)``; between 1 (every
  row on one line) and min(N, D). The buffer holds at least 2D rows where the batches allow
  (``ROWS_PER_DIM``), so that the rank is limited by the representation, not by the batch.
* ``embed_std``: SimSiam's collapse measure (Chen & He, CVPR 2021, Sec. 4.1): the std over
  the rows of each channel of the l2-normalised outputs z / ||z||, averaged over the d
  channels; about 1/sqrt(d) when the outputs spread over the sphere, 0 when they collapse to
  one point. The outputs are the queries of the plain stream.
* ``align``: alignment (Wang & Isola, ICML 2020, alpha = 2), ``E ||f(x) - f(y)||^2`` over the
  positive pairs, here each unit query and its positive key (so align = 2 - 2 pos_sim);
  0 when the views agree, 2 for unrelated directions.
* ``uniform``: uniformity (same paper, t = 2), ``log E exp(-2 ||f(x) - f(y)||^2)`` over all
  pairs of distinct unit queries; 0 at collapse, about -4 for points spread uniformly over a
  high-dimensional sphere.

Under torchrun each process computes the signals on its own batches and the logged value is
their mean over processes (the same on every rank, so every rank's alarm agrees).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

SIGNALS = ("rankme", "embed_std", "align", "uniform")  # the metrics.jsonl keys
RANKME_EPS = 1e-7   # Garrido et al.'s epsilon in p_k
ROWS_PER_DIM = 2    # the buffer's rows per representation dimension (RankMe up to D)
MAX_ROWS = 8192     # at most this many rows (the cost of the SVD and of the pairs)


# --------------------------------------------------------------------------- the formulas
def rankme(h: Tensor, eps: float = RANKME_EPS) -> Tensor:
    """RankMe of h (N, D): exp(-sum_k p_k log p_k), p_k = s_k / ||s||_1 + eps, s the
    singular values of h (Garrido et al. 2023, eq. 1). 0-dim float32 tensor."""
    s = torch.linalg.svdvals(h.float())
    p = s / s.sum().clamp_min(torch.finfo(s.dtype).tiny) + eps
    return torch.exp(-(p * p.log()).sum())


def embed_std(z: Tensor) -> Tensor:
    """The std over the N rows of each channel of z / ||z|| (N, d), averaged over the d
    channels (SimSiam's measure; the sample std, N - 1 in the denominator)."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean()


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """``E ||x_i - y_i||^alpha`` over the positive pairs (x_i, y_i) of unit rows (x and y are
    l2-normalised here; Wang & Isola 2020, alpha = 2)."""
    x, y = F.normalize(x.float(), dim=1), F.normalize(y.float(), dim=1)
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """``log E exp(-t ||x_i - x_j||^2)`` over the pairs i < j of the unit rows of x
    (l2-normalised here; Wang & Isola 2020, t = 2)."""
    x = F.normalize(x.float(), dim=1)
    return torch.pdist(x).pow(2).mul(-t).exp().mean().log()


# --------------------------------------------------------------------------- the alarm
# The floors, set from measured runs (docs/monitoring.md): healthy runs stayed above both,
# runs on images of one flat colour (no information) went under one of them.
STD_FLOOR = 0.1     # embed_std * sqrt(d) under this: the outputs gather toward one point
RANK_FLOOR = 10.0   # rankme under this: the representations span under ~10 directions
PATIENCE = 3        # consecutive log steps under a floor before the alarm
ADVICE = ("check that the two views differ and carry the image (python -m sslkit.preview), "
          "lower optim.lr or lengthen optim.warmup_epochs; see docs/monitoring.md")


def floors(d: int) -> dict[str, float]:
    """The alarm's floor of each signal for outputs of dimension ``d``."""
    return {"embed_std": STD_FLOOR / math.sqrt(d), "rankme": RANK_FLOOR}


class Health:
    """The signals of a run and its collapse alarm.

    :meth:`observe` after every step keeps references to the step's plain representations,
    queries and positive keys (the last ``batches`` steps: at least ``ROWS_PER_DIM`` x the
    representation width in rows, at most ``MAX_ROWS``); :meth:`signals` computes the four
    signals from them at a log step; :meth:`check` reads the logged (process-averaged) values
    and says when ``embed_std`` or ``rankme`` has stayed under its floor for ``PATIENCE`` log
    steps in a row (once per run; :attr:`alarm` describes it, :meth:`warning` and
    :meth:`stop_line` are its lines). The alarm and the counts toward it are part of the
    run's state (:meth:`state_dict`, in ``last.pt``): a resumed run does not forget an alarm
    in its summary, and does not repeat it unless asked to watch again (``rearm``: a run
    stopped by ``train.on_collapse: stop`` and resumed with it); the kept steps are not, so
    after a resume the signals start again once the buffer has refilled.
    """

    def __init__(self, feat_dim: int, local_batch: int):
        rows = min(MAX_ROWS, max(ROWS_PER_DIM * feat_dim, local_batch))
        self.batches = max(1, math.ceil(rows / local_batch))
        self.kept: deque[tuple[Tensor, Tensor, Tensor]] = deque(maxlen=self.batches)
        self.under = {"embed_std": 0, "rankme": 0}
        self.alarm: Optional[str] = None   # the run's first alarm (its summary)
        self.latest: Optional[str] = None  # the alarm just raised (its warning or stop line)
        self.armed = True
        self.last: dict[str, float] = {}
        self.d = 1  # the outputs' width, read from them

    def state_dict(self) -> dict:
        """The alarm (its description, or None) and the log steps in a row under each floor."""
        return {"alarm": self.alarm, "under": dict(self.under)}

    def load_state_dict(self, state: Optional[dict], rearm: bool = False) -> None:
        """Restore :meth:`state_dict` (None: a checkpoint written before it was kept); with
        ``rearm`` an alarm that went off before is watched for again from zero."""
        if state:
            self.alarm = state.get("alarm")
            self.under.update({k: int(v) for k, v in state.get("under", {}).items()
                               if k in self.under})
        if self.alarm is not None:
            self.armed = rearm
            if rearm:
                self.under = dict.fromkeys(self.under, 0)

    def observe(self, method) -> None:
        """Keep the step's detached tensors (no copy; the oldest step's are let go)."""
        if method.features is not None and method.observed is not None:
            self.kept.append((method.features, *method.observed))

    def clear(self) -> None:
        """Forget the kept steps (a rollback left them behind)."""
        self.kept.clear()

    @torch.no_grad()
    def signals(self) -> dict[str, Tensor]:
        """``rankme``, ``embed_std``, ``align``, ``uniform`` of the kept steps (0-dim float32
        tensors on the training device; NaN when fewer than 2 rows are finite: the rows of a
        skipped non-finite step are left out); empty until the buffer is full (at the start,
        and after a rollback emptied it), so that every logged value spans as many rows."""
        if len(self.kept) < self.batches:
            return {}
        h, q, k = (torch.cat([t[i] for t in self.kept]) for i in range(3))
        self.d = q.shape[1]
        ok = torch.isfinite(h).all(1) & torch.isfinite(q).all(1) & torch.isfinite(k).all(1)
        if int(ok.sum()) < 2:
            return dict.fromkeys(SIGNALS, torch.tensor(float("nan"), device=h.device))
        h, q, k = h[ok], q[ok], k[ok]
        return dict(zip(SIGNALS, (rankme(h), embed_std(q), alignment(q, k), uniformity(q))))

    def check(self, step: int, values: dict[str, float]) -> bool:
        """Whether the alarm goes off at this log step (``values``: the logged record; its
        description is then :attr:`alarm`). Looks only at a record with the signals (the
        buffer full)."""
        if any(k not in values for k in SIGNALS):
            return False
        self.last = {k: values[k] for k in SIGNALS}
        if not self.armed:
            return False
        floor = floors(self.d)
        for name in self.under:
            self.under[name] = self.under[name] + 1 if values[name] < floor[name] else 0
        name = next((n for n, c in self.under.items() if c >= PATIENCE), None)
        if name is None:
            return False
        what = {"embed_std": f"the outputs gather toward one point; its floor is "
                             f"{STD_FLOOR:g}/sqrt(d) = {floor[name]:.4g} for d = {self.d}",
                "rankme": f"the representations span under {RANK_FLOOR:g} directions"}[name]
        self.latest = (f"{name} {values[name]:.4g} at step {step}, under {floor[name]:.4g} for "
                       f"{PATIENCE} log steps ({what})")
        self.alarm = self.alarm or self.latest
        self.armed = False
        return True

    def warning(self) -> str:
        """The alarm's ``warning:`` line (``train.on_collapse: warn``), without the prefix."""
        return f"collapse: {self.latest}; {ADVICE}"

    def stop_line(self, step: int) -> str:
        """The one ``error:`` line of ``train.on_collapse: stop``, without the prefix."""
        return (f"the run collapsed: {self.latest}; stopped with a checkpoint of step {step} "
                f"(exit code 4; train.on_collapse=warn trains on); {ADVICE}")

    def summary(self) -> str:
        """The run's health in one line (the end-of-run summary)."""
        if self.alarm is not None:
            return f"collapse alarm: {self.alarm}"
        if not self.last:
            return "not measured (no log step)"
        values = ", ".join(f"{k} {v:.4g}" for k, v in self.last.items())
        return f"healthy (no signal under its floor; last: {values})"
