"""Fuzzing the config loader and the --set parser: any input gives a Config or a one-line
ConfigError, never another exception (which would reach the user as a traceback)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sslkit import config
from sslkit.errors import ConfigError

KEYS = config.all_keys()
# no subnormals: the engine (run in-process by other tests) turns on flush-to-zero, under
# which hypothesis refuses to generate them
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _ok_or_config_error(fn) -> None:
    try:
        cfg = fn()
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).strip()
        return
    assert isinstance(cfg, config.Config)


@FUZZ
@given(st.text(max_size=120))
def test_set_parser_any_text(item):
    _ok_or_config_error(lambda: config.build({}, [item]))


@FUZZ
@given(st.sampled_from(KEYS), st.text(max_size=40))
def test_set_parser_known_key_any_value(key, text):
    _ok_or_config_error(lambda: config.build({}, [f"{key}={text}"]))


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(["run", "data", "train", "method", "bogus"]),
                                 st.text(max_size=6)),
                       st.one_of(values, st.dictionaries(st.sampled_from(
                           [k.split(".")[1] for k in KEYS] + ["nope"]), values, max_size=4)),
                       max_size=4))
def test_config_tree_any_structure(tree):
    _ok_or_config_error(lambda: config.build(tree))


@FUZZ
@given(st.binary(max_size=300))
def test_config_file_any_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(data)
        _ok_or_config_error(lambda: config.load(path))


@FUZZ
@given(values)
def test_config_file_any_yaml_document(doc):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(doc))
        _ok_or_config_error(lambda: config.load(path))
