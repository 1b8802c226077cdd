"""run_lincls.py driver (not built yet: see the open issue "Evaluation")."""
from __future__ import annotations

from sslkit.errors import UserError


def run_lincls(checkpoint=None, config_path=None, overrides=None, baseline=None, output=None):
    raise UserError("linear evaluation is not built yet")
