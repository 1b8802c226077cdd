"""The loss of the BatchFormer's streams: one MoCo direction's terms, every query stream
against every key stream, reduced by ``batchformer.loss_reduction``; and the merge of the
directions.

Streams. With BatchFormer, in training, the queries q (S*B, d) hold S = 2 query streams (the
plain rows, then the BatchFormer rows); the keys are one stream (``batchformer.keys: plain``)
or two (``both``: the momentum features also passed through the BatchFormer). One MoCo
direction (MoCo-v3: ctr(q1, k2) or ctr(q2, k1); MoCo-v2: ctr(q1, k2) against the queue) has
one term ctr(q_s, k_t) per query stream s and key stream t, each the method's own loss (its
mean over the B query rows):

* ``mean``: the mean over the S x T terms, so the loss keeps MoCo's scale;
* ``sum``: their sum. MoCo-v3 with ``keys: both`` sums 2 x 2 terms per direction and 8 over
  both directions, the loss of the BatchFormer authors' MoCo-v3 (zhihou7/BatchFormer
  ``moco-v3/moco/builder.py`` at c906e92 and later, ``add_bf=1``), 4x the mean; with ``keys:
  plain`` 2 terms per direction (2x the mean). The authors' MoCo-v2 (``builder_v2.py``) takes
  one cross-entropy over the 4B rows of the 4 pairings: the mean.

The stats: ``loss_plain`` / ``loss_bf`` are each query stream's loss averaged over the key
streams (MoCo's scale whatever the reduction), ``pos_sim`` / ``neg_sim`` those of the plain
query stream against the plain keys.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor

Stats = dict[str, Tensor]
Ctr = Callable[[Tensor, Tensor], Tensor]
Similarities = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor]"]


def _add(terms: list[Tensor]) -> Tensor:
    return terms[0] if len(terms) == 1 else sum(terms[1:], terms[0])


def contrast(q: Tensor, b: int, keys: list[Tensor], ctr: Ctr, similarities: Similarities,
             reduction: str = "mean") -> Stats:
    """One direction: the queries q (S*B, d), S in {1, 2}, against the key streams ``keys``
    (each (B, d), or gathered for MoCo-v3); ``loss`` as in the module doc. With S = 1 the
    queries are one stream (the plain network, or evaluation)."""
    pos, neg = similarities(q[:b], keys[0])
    out = {"pos_sim": pos, "neg_sim": neg}
    streams = [q] if q.shape[0] == b else [q[:b], q[b:]]
    terms = [[ctr(rows, k) for k in keys] for rows in streams]  # [query stream][key stream]
    means = [_add(t) if len(t) == 1 else _add(t) / len(t) for t in terms]
    if len(streams) == 2:
        out["loss_plain"], out["loss_bf"] = means
    if reduction == "sum":
        out["loss"] = _add([term for row in terms for term in row])
    elif len(streams) == 1:
        out["loss"] = means[0]
    else:  # the mean over the S x T terms == the mean of the query streams' means
        out["loss"] = (means[0] + means[1]) / 2
    return out


def merge(parts: list[Stats]) -> tuple[Tensor, Stats]:
    """(summed loss, detached stats) over the directions: losses add (MoCo-v3's symmetric
    loss is ctr(q1, k2) + ctr(q2, k1)), similarities average."""
    loss = _add([p["loss"] for p in parts])
    stats = {name: _add([p[name] for p in parts]).detach() for name in parts[0] if name != "loss"}
    for name in ("pos_sim", "neg_sim"):
        stats[name] = stats[name] / len(parts)
    return loss, stats
