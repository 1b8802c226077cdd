#!/usr/bin/env python3
"""Regenerate docs/errors.md: run every bad-input case of tests/error_cases.py and record the
one-line message it produces.

    .venv/bin/python scripts/errors_table.py
"""
from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from error_cases import CASES  # noqa: E402
from test_errors import MAINS, hidden  # noqa: E402

HEADER = """# Errors: every bad input gets one line

Bad input to `run_pretrain.py`, `run_lincls.py`, `run_finetune.py`, `python -m sslkit.export`,
`python -m sslkit.data.shards` or a config file stops with ONE line `error: ...` on stderr and exit code 2, before anything
on disk is changed (no traceback;
exit code 1 is reserved for internal errors, which keep their traceback so they can be
reported). Each row below is a test case (`tests/error_cases.py`, run by
`tests/test_errors.py`); this page is generated from them by `scripts/errors_table.py`, so
the messages are the real ones (temporary paths shortened to `<tmp>`).

Also covered elsewhere: the config loader and the `--set` parser are fuzzed with hypothesis
(`tests/test_fuzz.py`): no input produces a traceback. A NaN/inf loss stops the run with one
line naming the step (`train.nan_policy=stop`, the default) and keeps the last finite
checkpoint; with `train.spike_policy=rollback` a loss that keeps spiking stops with one line
after `train.spike_retries` rollbacks (exit code 2); the collapse alarm's stop
(`train.on_collapse=stop`) is one line with exit code 4 ([monitoring.md](monitoring.md)); a
full disk while writing a checkpoint keeps the previous one.

| case | family | input | message |
|---|---|---|---|
"""


def main() -> int:
    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            argv = case.build(Path(tmp))
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
                    hidden(case.hide_modules):
                code = MAINS[case.script](argv)
            line = next((ln for ln in err.getvalue().splitlines() if ln.startswith("error:")),
                        "(no error line)")
            line = line.replace(str(Path(tmp).resolve()), "<tmp>").replace(tmp, "<tmp>")
            line = re.sub(r"\|", r"\\|", line)
        if code != 2:
            print(f"{case.id}: exit code {code}, expected 2", file=sys.stderr)
            return 1
        script = {"pretrain": "run_pretrain.py", "lincls": "run_lincls.py",
                  "finetune": "run_finetune.py", "export": "python -m sslkit.export",
                  "shards": "python -m sslkit.data.shards"}[case.script]
        rows.append(f"| `{case.id}` | {case.family} | {case.input} ({script}) | `{line}` |")
    out = ROOT / "docs" / "errors.md"
    out.write_text(HEADER + "\n".join(rows) + "\n")
    print(f"wrote {out} ({len(rows)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
