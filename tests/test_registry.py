"""A new method is its class plus the decorator that registers it (and a preset of its own,
if it wants one): a toy MoCo-v3 variant without the predictor, registered in this test alone,
resolves, builds and pretrains 5 steps with nothing else of sslkit touched."""
from __future__ import annotations

import math

import pytest
import torch

from helpers_tiny import tiny_config
from sslkit import augment
from sslkit.errors import ConfigError
from sslkit.methods import METHODS, MoCoV3, build_method, method_class, register, resolved
from sslkit.train.engine import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def toy():
    augment.register_preset("toy", **dict(augment.PRESETS["mocov3"], flip_p=0.0))
    augment.register_preset("toy_small", **dict(augment.PRESETS["mocov3_small"], flip_p=0.0,
                                                solarize_p=(0.0, 0.0)))

    @register("toy_v3")
    class ToyV3(MoCoV3):
        """MoCo-v3 without its predictor: the queries are the projections."""

        augment_preset, augment_preset_small = "toy", "toy_small"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            del self.predictor

        def _heads(self, h: torch.Tensor) -> torch.Tensor:
            return self.projector(h)

    try:
        yield ToyV3
    finally:
        METHODS.pop("toy_v3", None)
        augment.PRESETS.pop("toy", None)
        augment.PRESETS.pop("toy_small", None)


def test_a_registered_toy_method_resolves_builds_and_pretrains(toy, tmp_path):
    cfg = resolved(tiny_config(tmp_path / "run", method="mocov3",
                               extra=["method.name=toy_v3", "train.max_steps=5"]))
    # its own preset (the small one at 16 px); MoCo-v3's paper defaults, inherited
    assert cfg.augment.preset == "toy_small" and cfg.augment.flip_p == 0.0
    assert cfg.augment.solarize_p == [0.0, 0.0]
    assert cfg.method.momentum_schedule == "cosine" and cfg.method.proj_bn is True
    model = build_method(cfg)
    assert type(model) is toy and not [n for n, _ in model.named_parameters()
                                       if n.startswith("predictor")]
    trainer = Trainer(cfg)
    assert trainer.input.views.preset == "toy_small"
    before = {n: p.detach().clone() for n, p in trainer.method.named_parameters()}
    summary = trainer.fit()
    assert summary.steps == 5 and math.isfinite(summary.final_loss)
    moved = [n for n, p in trainer.method.named_parameters()
             if p.requires_grad and not torch.equal(p, before[n])]
    assert any(n.startswith("backbone.") for n in moved)
    assert any(n.startswith("projector.") for n in moved)


def test_the_registry_names_what_it_holds(toy):
    assert method_class("toy_v3") is toy
    with pytest.raises(ConfigError, match="method.name=simclr is invalid: expected one of "
                                          "'mocov2', 'mocov3', 'toy_v3'"):
        method_class("simclr")
    with pytest.raises(ValueError, match="registered already"):
        register("toy_v3")(type("Other", (MoCoV3,), {}))
    with pytest.raises(ValueError, match="registered already"):
        augment.register_preset("toy", **augment.PRESETS["mocov2"])


def test_a_subclass_inherits_its_parents_preset_and_defaults_unless_it_sets_its_own():
    class Plain(MoCoV3):
        pass

    assert Plain.preset_for(224) == "mocov3" and Plain.preset_for(32) == "mocov3_small"
    assert Plain.paper_defaults(True, 384) == MoCoV3.paper_defaults(True, 384)
    with pytest.raises(ConfigError, match="augment.hue"):
        augment.register_preset("bad", **dict(augment.PRESETS["mocov2"], hue=0.7))
