"""Weighted kNN: sslkit's FAISS search vs a chunked torch kNN vs scikit-learn.

All three compute the same classifier (cosine similarity on L2-normalised features, top-k,
vote weight exp(sim / T), summed per class; k=200, T=0.1 by default) on the same synthetic
features (Gaussian clusters: 100 classes, 50k train x 10k queries x 512-d by default):

* sslkit: ``sslkit.knn.knn_evaluate`` (FAISS ``IndexFlatIP``, queries in chunks of 4096);
* torch: per chunk of 1024 queries, ``q @ train.T`` (chunk, N), ``topk``, ``scatter_add``;
* sklearn: ``KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine",
  weights=exp((1 - distance) / T), n_jobs=threads)``; ``predict_proba``.

Each method is warmed up once (sklearn: on a small slice) and timed ``--repeats`` times
(median; methods alternate). sklearn at full size can take minutes on a small CPU:
``--sklearn-queries`` times it on the first Q' queries and reports per-query throughput
(the search is linear in the number of queries; the table says which size was timed).
The top-1 accuracies of the three must agree (ties aside). A row goes to
docs/benchmarks.md (``--no-write`` to skip).

    python bench/knn.py
    python bench/knn.py --train 5000 --queries 1000 --no-write     # quick
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import machine, median_time, write_rows  # noqa: E402

from sslkit.knn import faiss_info, knn_evaluate, set_faiss_threads  # noqa: E402

SECTION = "## kNN: FAISS vs chunked torch vs scikit-learn (`bench/knn.py`)"
HEADER = ("| date | machine | threads | torch / faiss / sklearn | train x queries x dim, k | "
          "FAISS s | torch s | sklearn s (queries timed) | FAISS vs torch | "
          "FAISS vs sklearn | top-1 FAISS / torch / sklearn |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")




def make_data(n_train: int, n_query: int, dim: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    ytr = torch.randint(0, classes, (n_train,), generator=g)
    yq = torch.randint(0, classes, (n_query,), generator=g)
    noise = 5.0
    xtr = centres[ytr] + noise * torch.randn(n_train, dim, generator=g)
    xq = centres[yq] + noise * torch.randn(n_query, dim, generator=g)
    return xtr, ytr, xq, yq


def torch_knn_top1(xtr, ytr, xq, yq, classes, k, t, chunk=1024) -> float:
    """The chunked torch reference (what toolkits without FAISS do)."""
    tr = F.normalize(xtr, dim=1)
    hits = 0
    for s in range(0, xq.shape[0], chunk):
        q = F.normalize(xq[s:s + chunk], dim=1)
        sim, idx = (q @ tr.T).topk(k, dim=1)  # (c, k)
        scores = torch.zeros(q.shape[0], classes, device=q.device).scatter_add_(
            1, ytr[idx], (sim / t).exp())
        hits += int((scores.argmax(1) == yq[s:s + chunk]).sum())
    return 100.0 * hits / xq.shape[0]


def sklearn_top1(xtr, ytr, xq, yq, k, t) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine",
                               weights=lambda d: np.exp((1.0 - d) / t),
                               n_jobs=torch.get_num_threads())
    clf.fit(xtr.numpy(), ytr.numpy())
    proba = clf.predict_proba(xq.numpy())
    pred = clf.classes_[proba.argmax(1)]
    return 100.0 * float((pred == yq.numpy()).mean())






def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--t", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sklearn-queries", type=int, default=None,
                    help="time sklearn on this many queries only (default: all)")
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for all three (torch, faiss OpenMP, sklearn's BLAS/joblib)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--device", default="cpu", help="cuda: features on the GPU (FAISS's GPU "
                                                     "index when faiss has GPUs; torch on the "
                                                     "GPU; no sklearn)")
    args = ap.parse_args()
    import sklearn

    if args.threads:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency

        torch.set_num_threads(args.threads)
        set_faiss_threads(args.threads)
        threadpool_limits(args.threads)

    xtr, ytr, xq, yq = make_data(args.train, args.queries, args.dim, args.classes)
    device = torch.device(args.device)
    if device.type == "cuda":
        xtr, ytr, xq, yq = (v.to(device) for v in (xtr, ytr, xq, yq))
        args.no_sklearn = True
    c, k, t = args.classes, args.k, args.t

    def run_faiss():
        return knn_evaluate(xtr, ytr, xq, yq, c, [k], [t])[0].top1

    def run_torch():
        return torch_knn_top1(xtr, ytr, xq, yq, c, k, t)

    run_faiss(), torch_knn_top1(xtr[:2000], ytr[:2000], xq[:200], yq[:200], c, k, t)  # warm-up
    tf, tt, acc_f, acc_t = [], [], None, None
    for _ in range(args.repeats):  # alternate so both see the same background load
        s, acc_f = median_time(run_faiss, 1)
        tf.append(s)
        s, acc_t = median_time(run_torch, 1)
        tt.append(s)
    tf, tt = statistics.median(tf), statistics.median(tt)
    print(f"FAISS {tf:.2f} s (top-1 {acc_f:.2f}), torch {tt:.2f} s (top-1 {acc_t:.2f}), "
          f"ratio {tt / tf:.2f}x", flush=True)

    ts, acc_s, qs = float("nan"), float("nan"), 0
    if not args.no_sklearn:
        qs = min(args.sklearn_queries or args.queries, args.queries)
        sklearn_top1(xtr[:2000], ytr[:2000], xq[:100], yq[:100], min(k, 2000), t)  # warm-up
        ts, acc_s = median_time(lambda: sklearn_top1(xtr, ytr, xq[:qs], yq[:qs], k, t),
                                1 if qs < args.queries or args.repeats == 1 else 2)
        scale = args.queries / qs
        print(f"sklearn {ts:.2f} s on {qs} queries (x{scale:.1f} -> {ts * scale:.2f} s for "
              f"{args.queries}), top-1 {acc_s:.2f}; FAISS vs sklearn {ts * scale / tf:.1f}x",
              flush=True)
        # the same classifier: accuracies agree (on the sklearn subset for sklearn)
        sub_f = knn_evaluate(xtr, ytr, xq[:qs], yq[:qs], c, [k], [t])[0].top1
        print(f"FAISS top-1 on the sklearn queries: {sub_f:.2f}")
    if not args.no_write:
        info = faiss_info()
        threads = (f"torch {torch.get_num_threads()}, faiss {info['threads']}"
                   + (f", faiss GPUs {info['gpus']}" if device.type == "cuda" else ""))
        versions = (f"{torch.__version__.split('+')[0]} / {info['version']} / "
                    f"{sklearn.__version__}")
        scale = args.queries / qs if qs else float("nan")
        skl = f"{ts:.2f} ({qs})" if qs else "-"
        subset = " (subset)" if qs and qs < args.queries else ""
        row = (f"| {datetime.date.today().isoformat()} | {machine(device)} | {threads} | "
               f"{versions} | "
               f"{args.train // 1000}k x {args.queries // 1000}k x {args.dim}, k={k} | "
               f"{tf:.2f} | {tt:.2f} | {skl} | {tt / tf:.2f}x | "
               f"{(ts * scale / tf) if qs else float('nan'):.1f}x | "
               f"{acc_f:.2f} / {acc_t:.2f} / {acc_s:.2f}{subset} |")
        write_rows(SECTION, HEADER, [row], Path(args.out))
        print(f"added a row to {args.out}")


if __name__ == "__main__":
    main()
