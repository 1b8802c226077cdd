"""Where the files of a sharded source are: ``data.root`` / ``data.val_root`` as patterns,
lists or folders, and remote shards (``pipe:`` commands, URLs) staged to a local cache.

A pattern is written as WebDataset writes it: ``'::'`` joins several, braces expand
(``train-{000000..000146}.tar``, :func:`webdataset.shardlists.expand_urls`), and a local
name with ``*``, ``?`` or ``[`` is a shell glob (the Hugging Face hub's ``train-*.parquet``).
A folder means its files of the source's extension, split by name as the Hugging Face hub
and sslkit's shard writer name them: ``train*`` for training, ``val*`` / ``validation*`` for
evaluation (a folder without ``train*`` files is all training data).

Random access needs seekable local files. A remote shard (a ``pipe:`` command, or a URL
WebDataset's ``gopen`` opens: ``http(s)://``, ``gs://``, ...) is therefore copied once, whole,
into the cache folder ``$SSLKIT_SHARD_CACHE`` (default ``~/.cache/sslkit/shards``), named
after a hash of its URL, written under a temporary name and renamed when complete; later runs
(and a resumed run) read the copy. Under torchrun rank 0 stages first; the other processes
then find the files (a shared cache) or stage their own (a node-local one).
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
from typing import Callable, Optional

from sslkit.distributed import is_main_process, main_process_first
from sslkit.errors import DataError

CACHE_ENV = "SSLKIT_SHARD_CACHE"
TRAIN_PREFIXES = ("train",)
VAL_PREFIXES = ("val", "validation")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def is_remote(url: str) -> bool:
    """A ``pipe:`` command or a URL with a scheme other than ``file:`` (no local path)."""
    m = _SCHEME.match(url)
    return bool(m) and m.group(1).lower() != "file"


def local_path(url: str) -> str:
    return os.path.expanduser(re.sub(r"^file://?", "/", url) if url.startswith("file:") else url)


def expand(spec: str, expand_urls: Callable[[str], list[str]]) -> list[str]:
    """The names of ``spec``: WebDataset's expansion (``'::'``, braces), then shell globs of
    local names (sorted); a name that matches no file is kept, for the caller to report."""
    out: list[str] = []
    for name in expand_urls(spec):
        if not is_remote(name) and any(c in name for c in "*?["):
            out.extend(sorted(glob.glob(local_path(name))) or [name])
        else:
            out.append(name)
    return out


def _by_prefix(files: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [f for f in files if os.path.basename(f).lower().startswith(prefixes)]


def split_names(source: str, root: str, val_root: Optional[str], split: str, ext: str,
                expand_urls: Callable[[str], list[str]]) -> list[str]:
    """The names (paths or URLs) of ``split`` ("pretrain", "train": ``root``; "test":
    ``val_root``, or the validation files of a ``root`` folder), each checked to exist when
    local. A folder gives its ``*{ext}`` files (see the module docstring)."""
    test = split == "test"
    spec = val_root if test and val_root else root
    folder = local_path(spec)
    if not is_remote(spec) and os.path.isdir(folder):
        files = sorted(os.path.join(folder, e) for e in os.listdir(folder)
                       if e.lower().endswith(ext) and os.path.isfile(os.path.join(folder, e)))
        if not files:
            raise DataError(f"{source}: the folder '{folder}' holds no {ext} files; set "
                            f"data.{'val_root' if test and val_root else 'root'} to the "
                            f"{ext} files (a pattern such as train-{{000000..000009}}{ext})")
        train = _by_prefix(files, TRAIN_PREFIXES)
        if test and not val_root:
            val = _by_prefix(files, VAL_PREFIXES)
            if not val:
                raise DataError(f"{source}: kNN and the linear probe need the evaluation "
                                f"split: set data.val_root to its {ext} files (none named "
                                f"val*/validation* in '{folder}'), or --set eval.knn_every=0 "
                                f"to pretrain without the online kNN")
            return val
        return train if (train and not (test and val_root)) else files
    if test and not val_root:
        raise DataError(f"{source}: kNN and the linear probe need the evaluation split: set "
                        f"data.val_root to its {ext} files, or --set eval.knn_every=0 to "
                        f"pretrain without the online kNN")
    names = expand(spec, expand_urls)
    missing = [n for n in names if not is_remote(n) and not os.path.isfile(local_path(n))]
    if missing and len(missing) == len(names):
        raise DataError(f"{source}: no file matches data.{'val_root' if test else 'root'} "
                        f"'{spec}' (e.g. '{missing[0]}' does not exist); give existing files: "
                        f"a folder, a pattern (train-{{000000..000009}}{ext}, *{ext}) or "
                        f"names joined by '::'")
    if missing:
        raise DataError(f"{source}: {len(missing)} of the {len(names)} files of '{spec}' do "
                        f"not exist (e.g. '{missing[0]}'); fix the pattern's range or restore "
                        f"the files")
    return names


def cache_dir() -> str:
    return os.path.expanduser(os.environ.get(CACHE_ENV) or "~/.cache/sslkit/shards")


def staged_name(url: str) -> str:
    """The cache file of a remote shard: a hash of its URL plus the last ``.tar`` name in it."""
    names = re.findall(r"[A-Za-z0-9_.-]+\.tar\b", url)
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{names[-1] if names else 'shard.tar'}"


def stage(source: str, names: list[str], opener: Callable[[str], object]) -> list[str]:
    """Local paths of ``names``: local ones as they are, remote ones copied once into the
    cache (:func:`cache_dir`) through ``opener`` (WebDataset's ``gopen``)."""
    remote = [n for n in names if is_remote(n)]
    if not remote:
        return [local_path(n) for n in names]
    folder = cache_dir()
    paths = {n: os.path.join(folder, staged_name(n)) for n in remote}
    todo = [n for n in remote if not os.path.isfile(paths[n])]
    with main_process_first():
        todo = [n for n in todo if not os.path.isfile(paths[n])]
        if todo and is_main_process():
            print(f"{source}: staging {len(todo)} remote shard(s) into {folder} (random access "
                  f"needs local files; set {CACHE_ENV} to choose the folder)", flush=True)
        for n in todo:
            _copy(source, n, paths[n], opener)
    return [paths[n] if n in paths else local_path(n) for n in names]


def _copy(source: str, url: str, dest: str, opener: Callable[[str], object]) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.tmp-{os.getpid()}"
    try:
        stream = opener(url)
        try:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
        finally:
            stream.close()  # a pipe: command's exit status is checked here
        if os.path.getsize(tmp) == 0:
            raise OSError("it gave no data")
        os.replace(tmp, dest)
    except Exception as e:  # gopen raises OSError, ValueError, subprocess errors, ...
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise DataError(f"{source}: cannot stage the remote shard '{url}' into '{dest}' "
                        f"({type(e).__name__}: {e}); check the command or URL and the free "
                        f"space of {CACHE_ENV}") from None
