"""Training engine (not built yet: see the open issue "Training engine")."""
from __future__ import annotations

from sslkit.config import Config
from sslkit.errors import UserError


def pretrain(cfg: Config, resume: bool = False, overwrite: bool = False) -> None:
    print(cfg.to_yaml(), end="", flush=True)
    raise UserError("the pretraining engine is not built yet; this release only validates "
                    "the config")
