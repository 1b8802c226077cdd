"""The ImageNet and CIFAR-10 recipes against the official code (docs/recipes.md).

The official values and the reasons for deliberate differences live in scripts/recipes.py
(the same data generates docs/recipes.md); the sslkit side is read from the code under test.
"""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT
from sslkit import config

sys.path.insert(0, str(ROOT / "scripts"))
import recipes  # noqa: E402  (scripts/recipes.py)

NAMES = recipes.recipe_configs()


def _rows(name: str, overrides: list[str] | None = None) -> dict[str, recipes.Row]:
    cfg = config.load(recipes.config_path(name), overrides)
    return {row.key: row for row in recipes.compare(cfg, recipes.RECIPES[name])}


def test_every_imagenet_and_cifar_config_has_a_reference():
    assert len(NAMES) >= 9
    assert set(NAMES) == set(recipes.RECIPES)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_matches_the_official_values(name):
    """Every row equals the official value, or is a recorded deliberate difference (with a
    reason) whose recorded sslkit value is the one the config resolves to."""
    rows = _rows(name)
    bad = [(r.key, recipes.PARAM[r.key].show(r.sslkit), recipes.PARAM[r.key].show(
        r.official.value), r.status) for r in recipes.problems(list(rows.values()))]
    assert not bad, f"configs/{name}.yaml: {bad}"
    recipe = recipes.RECIPES[name]
    for key, mark in recipe.deliberate.items():
        assert mark.reason.strip(), f"{name}: the deliberate difference '{key}' has no reason"
        assert key in rows, f"{name}: deliberate difference for '{key}', which has no row"
    for key, off in recipe.official.items():
        assert off.source.strip(), f"{name}: official '{key}' names no source"


def test_the_core_parameters_are_compared():
    """The parameters issue 15 asks about are rows of every recipe they apply to."""
    core = {"backbone", "projector", "projector_bn", "head_bias", "bn", "optimizer", "lr_rule",
            "lr", "weight_decay", "wd_bias_norm", "warmup", "schedule", "epochs", "batch",
            "temperature", "ema", "ema_update", "crop_scale", "jitter", "blur_p", "solarize_p",
            "precision", "eval_lr", "eval_batch", "eval_epochs", "eval_schedule", "eval_wd"}
    for name in NAMES:
        rows = _rows(name)
        assert core <= set(rows), (name, core - set(rows))
        recipe = recipes.RECIPES[name]
        if "mocov2" in name:
            assert {"queue", "loss"} <= set(rows)
        else:
            assert {"predictor", "predictor_bn"} <= set(rows)
        if name.endswith("_bf"):
            assert {"bf_layer", "bf_scope", "bf_training", "bf_loss"} <= set(recipe.official)


def test_a_wrong_value_is_a_mismatch():
    rows = _rows("imagenet_mocov2_200ep", ["method.temperature=0.07"])
    assert rows["temperature"].status == "mismatch"
    assert [r.key for r in recipes.problems(list(rows.values()))] == ["temperature"]
    # values read from the built model and from the resolved augmentation are compared too
    rows = _rows("imagenet_mocov3_r50_100ep", ["method.proj_bn=false", "augment.saturation=0.4",
                                               "model.zero_init_residual=false"])
    assert {r.key for r in recipes.problems(list(rows.values()))} == {
        "projector_bn", "jitter", "zero_init_residual"}
    rows = _rows("imagenet_mocov3_vits_300ep", ["model.freeze_patch_embed=false"])
    assert rows["patch_embed_trained"].status == "mismatch"


def test_a_changed_deliberate_value_is_flagged():
    """A mark excuses one sslkit value: another one, or agreement, is reported as stale."""
    rows = _rows("cifar10_mocov3", ["train.epochs=300"])
    assert rows["epochs"].status == "stale"
    rows = _rows("imagenet_mocov2_200ep", ["optim.lr_scaling=none"])  # now equals the official
    assert rows["lr_rule"].status == "stale"


def test_the_lr_schedule_granularity_is_read_from_sslkit():
    """The 'per step' of the schedule row comes from sslkit.train.optim.lr_factor."""
    cfg = config.load(recipes.config_path("imagenet_mocov3_r50_100ep"))
    assert recipes._schedule(recipes.Resolved(cfg)) == ("cosine", "step", 0.0)
    cfg = config.load(recipes.config_path("imagenet_mocov3_r50_100ep"),
                      ["optim.schedule=constant"])
    assert recipes._schedule(recipes.Resolved(cfg))[:2] == ("constant", "epoch")


def test_same_compares_numbers_tolerantly_and_types_strictly():
    assert recipes.same(0.6 * 4096 / 256, 9.6) and not recipes.same(9.6, 9.7)
    assert recipes.same((0.2, 1.0), [0.2, 1]) and not recipes.same((0.2, 1.0), (0.2,))
    assert not recipes.same(True, 1) and recipes.same(None, None)


def test_docs_page_is_generated_from_the_data(tmp_path):
    page = ROOT / "docs" / "recipes.md"
    text = recipes.render()
    assert page.read_text(encoding="utf-8") == text, (
        "docs/recipes.md is stale; run python scripts/recipes.py")
    assert recipes.check(page) == 0
    stale = tmp_path / "recipes.md"
    stale.write_text(text.replace("| 65536 |", "| 4096 |", 1), encoding="utf-8")
    assert recipes.check(stale) == 1
    for name in NAMES:
        assert f"## {name}\n" in text


def test_readme_links_the_page():
    assert "docs/recipes.md" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_authors_batchformer_recipe_equals_their_code():
    """The `_bf_authors` recipe matches every BatchFormer row of the authors' MoCo-v3 code
    (zhihou7/BatchFormer 305efaa); sslkit's own-scheme twin differs on exactly the scheme rows,
    and the rows are read from the built model (a trained module is no longer theirs)."""
    rows = _rows("imagenet_mocov3_r50_100ep_bf_authors")
    bf = {k: r for k, r in rows.items() if k.startswith("bf_")}
    assert set(bf) == {"bf_layer", "bf_place", "bf_optim", "bf_scope", "bf_training", "bf_loss",
                       "bf_head_bn", "bf_precision"}
    assert all(r.status == "same" for r in bf.values()), {k: r.status for k, r in bf.items()}
    twin = _rows("imagenet_mocov3_r50_100ep_bf")
    assert {k for k, r in twin.items() if k.startswith("bf_") and r.status == "deliberate"} == {
        "bf_optim", "bf_training", "bf_loss", "bf_head_bn"}
    rows = _rows("imagenet_mocov3_r50_100ep_bf_authors", ["batchformer.frozen=false",
                                                          "batchformer.loss_reduction=mean"])
    assert {r.key for r in recipes.problems(list(rows.values()))} == {
        "bf_training", "bf_optim", "bf_loss"}


# --------------------------------------------------------------------------- fine-tuning
import recipes_finetune  # noqa: E402  (scripts/recipes_finetune.py)

FT_NAMES = recipes_finetune.finetune_configs()


def _ft_rows(name: str, overrides: list[str] | None = None) -> dict[str, recipes_finetune.Row]:
    cfg = config.load(recipes.config_path(name), overrides)
    return {r.key: r for r in recipes_finetune.compare(cfg, recipes_finetune.RECIPES[name])}


def test_every_fine_tuning_config_has_a_reference():
    assert set(FT_NAMES) == set(recipes_finetune.RECIPES) == {
        "imagenet_semisup_r50_1pct", "imagenet_semisup_r50_10pct", "imagenet_finetune_vits",
        "imagenet_finetune_vitb"}
    assert not set(FT_NAMES) & set(NAMES)  # not compared with the pretraining rows


@pytest.mark.parametrize("name", FT_NAMES)
def test_fine_tuning_recipe_matches_the_official_values(name):
    rows = _ft_rows(name)
    bad = [(r.key, r.status) for r in recipes_finetune.problems(list(rows.values()))]
    assert not bad, f"configs/{name}.yaml: {bad}"
    for key, mark in recipes_finetune.RECIPES[name].deliberate.items():
        assert mark.reason.strip() and key in rows, (name, key)
    core = {"optimizer", "lr", "weight_decay", "warmup", "schedule", "epochs", "batch",
            "labels", "crop", "mix", "label_smoothing", "head_init"}
    assert core <= set(rows), core - set(rows)
    if "vit" in name:
        assert {"layer_decay", "drop_path", "rand_augment", "trained"} <= set(rows)


def test_a_wrong_fine_tuning_value_is_a_mismatch():
    """The rows are read from the built optimizer and views, not from the keys alone."""
    rows = _ft_rows("imagenet_semisup_r50_1pct", ["finetune.nesterov=false",
                                                  "finetune.batch_size=1024"])
    assert {r.key for r in recipes_finetune.problems(list(rows.values()))} == {
        "optimizer", "lr", "batch"}
    rows = _ft_rows("imagenet_finetune_vits", ["finetune.layer_decay=0.65",
                                               "finetune.exclude_bias_norm=false"])
    assert rows["layer_decay"].sslkit == pytest.approx(0.65)
    assert {r.key for r in recipes_finetune.problems(list(rows.values()))} == {
        "layer_decay", "no_decay"}
