"""Config schema: defaults, YAML round trip, overrides, and every class of error."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from sslkit import config
from sslkit.errors import ConfigError
from sslkit.methods.resolve import resolved

CONTRACT_KEYS = """run.output_dir run.seed run.device run.precision data.name data.root
data.image_size model.backbone method.name method.temperature method.queue_size
batchformer.enabled optim.name optim.lr train.epochs train.batch_size train.max_steps
train.checkpoint_every_steps eval.mode eval.epochs eval.batch_size eval.knn_k
eval.knn_t""".split()


def test_contract_keys_exist_and_enums_match_design():
    keys = set(config.all_keys())
    assert set(CONTRACT_KEYS) <= keys
    cfg = config.build({})
    for value, key in [("cuda", "run.device"), ("fp16", "run.precision"),
                       ("imagefolder", "data.name"), ("mocov3", "method.name"),
                       ("lars", "optim.name"), ("adamw", "optim.name"), ("cached", "eval.mode")]:
        assert dataclasses.is_dataclass(config.build({}, [f"{key}={value}"]))
    assert cfg.train.max_steps is None and cfg.train.checkpoint_every_steps is None
    # the names of data.name and method.name are the registries'
    from sslkit.data import SOURCES
    from sslkit.methods import METHODS

    assert {"fashion_mnist", "cifar10", "cifar100", "stl10", "imagefolder",
            "synthetic"} <= set(SOURCES)
    assert {"mocov2", "mocov3"} <= set(METHODS)


def test_config_is_frozen():
    cfg = config.build({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3  # type: ignore[misc]


def test_yaml_round_trip(tmp_path, root):
    cfg = config.load(root / "configs/demo.yaml", ["train.epochs=3", "optim.lr=1e-3",
                                                    "augment.blur_p=[1.0, 0.1]"])
    path = tmp_path / "config.yaml"
    config.save(cfg, path)
    assert config.load(path) == cfg
    assert cfg.train.epochs == 3 and cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.augment.blur_p == [1.0, 0.1]


def test_every_shipped_config_loads(root):
    files = sorted((root / "configs").glob("*.yaml"))
    assert files
    for f in files:
        cfg = resolved(config.load(f))
        assert cfg.method.temperature is not None  # defaults resolved
        assert resolved(cfg) is cfg and resolved(config.load(f)) == cfg  # idempotent


@pytest.mark.parametrize("plain,twin", [
    *[(p, "_bf") for p in ["demo", "demo_mocov3", "cifar10_mocov2", "cifar10_mocov3",
                           "imagenet_mocov2_200ep", "imagenet_mocov3_r50_100ep", "demo_vit"]],
    ("demo_vit", "_bfv2"), ("imagenet_mocov3_vits_300ep", "_bfv2")])
def test_batchformer_recipes_change_only_the_batchformer(root, plain, twin):
    """A `_bf` / `_bfv2` recipe is its plain twin with the BatchFormer on: any other difference
    would confound the comparison of docs/results.md."""
    a = dataclasses.asdict(config.load(root / f"configs/{plain}.yaml"))
    b = dataclasses.asdict(config.load(root / f"configs/{plain}{twin}.yaml"))
    assert b["batchformer"]["version"] == {"_bf": "v1", "_bfv2": "v2"}[twin]
    assert a["batchformer"]["enabled"] is False and b["batchformer"]["enabled"] is True
    for d in (a, b):
        del d["batchformer"], d["run"]["output_dir"]
    assert a == b


def test_overrides_parse_as_yaml_scalars():
    cfg = config.build({}, ["train.epochs=7", "optim.lr=0.5", "batchformer.enabled=true",
                            "train.max_steps=null", "run.output_dir=runs/x y",
                            "data.subset=0.25", "eval.knn_ks=[5, 10]"])
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.lr == 0.5 and cfg.batchformer.enabled is True
    assert cfg.train.max_steps is None and cfg.run.output_dir == "runs/x y"
    assert cfg.data.subset == 0.25 and isinstance(cfg.data.subset, float)
    assert config.build({}, ["data.subset=100"]).data.subset == 100
    assert cfg.eval.knn_ks == [5, 10]
    # a string-typed key keeps the text, even if YAML would read a number
    assert config.build({}, ["run.output_dir=2024"]).run.output_dir == "2024"
    # later overrides win; overrides win over the file
    assert config.build({"train": {"epochs": 2}}, ["train.epochs=4", "train.epochs=5"]
                        ).train.epochs == 5


def test_scientific_notation_reads_as_float():
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; a float key accepts it as a number.
    assert config.build({"optim": {"weight_decay": "1e-4"}}).optim.weight_decay == 1e-4
    assert config.build({}, ["optim.lr=3e-2"]).optim.lr == 0.03


def test_load_leaves_defaults_to_the_resolver():
    """One place fills defaults: load() keeps the nulls, resolved() fills them."""
    raw = config.build({})
    assert raw.method.temperature is None and raw.augment.preset == "auto"
    assert raw.data.mean is None and raw.model.maxpool is None


def test_method_defaults_follow_the_papers():
    v2 = resolved(config.build({}))
    assert (v2.method.temperature, v2.method.queue_size, v2.method.momentum,
            v2.method.proj_dim, v2.method.proj_bn) == (0.2, 65536, 0.999, 128, False)
    assert v2.method.proj_hidden_dim == 512  # = the ResNet-18's feature dim (D-D-128 head)
    v3 = resolved(config.build({"method": {"name": "mocov3"}}))
    assert (v3.method.temperature, v3.method.momentum, v3.method.momentum_schedule,
            v3.method.proj_dim, v3.method.proj_hidden_dim, v3.method.proj_layers) == (
        1.0, 0.99, "cosine", 256, 4096, 2)
    vit = resolved(config.build({"method": {"name": "mocov3"},
                                 "model": {"backbone": "vit_small"}}))
    assert vit.method.temperature == 0.2 and vit.method.proj_layers == 3
    # an explicit value is kept
    assert resolved(config.build({}, ["method.temperature=0.5"])).method.temperature == 0.5
    # preset auto follows method and image size
    assert v2.augment.preset == "mocov2_small" and v3.augment.preset == "mocov3_small"
    assert resolved(config.build({}, ["data.image_size=224"])).augment.preset == "mocov2"


@pytest.mark.parametrize("overrides, fragments", [
    (["method.queue_size=1000"], ["method.queue_size=1000", "multiple", "256"]),
    (["method.queue_size=1280", "method.symmetric=true"], ["multiple", "512", "symmetric"]),
    (["train.batch_size=100", "method.queue_size=1000"], ["train.batch_size=100", "bn_splits=8"]),
    (["batchformer.enabled=true", "batchformer.version=v2"], ["needs a ViT", "resnet18"]),
    (["model.backbone=vit_tiny", "batchformer.enabled=true", "batchformer.version=v2",
      "batchformer.insert_after=[12]"], ["out of range", "0..11"]),
])
def test_rules_of_methods_and_models_on_resolve(overrides, fragments):
    """Rules that need the method's or the model's facts are checked by the resolver."""
    cfg = config.build({}, overrides)  # the schema alone accepts them
    with pytest.raises(ConfigError) as exc:
        resolved(cfg)
    for frag in fragments:
        assert frag in str(exc.value), (frag, str(exc.value))


@pytest.mark.parametrize("overrides, fragments", [
    (["train.batchsize=3"], ["unknown config key 'train.batchsize'", "did you mean 'train.batch_size'"]),
    (["trian.epochs=3"], ["unknown config key 'trian.epochs'", "train.epochs"]),
    (["train.batch_size=0"], ["train.batch_size=0", ">= 1"]),
    (["train.batch_size=-8"], ["train.batch_size=-8", ">= 1"]),
    (["train.batch_size=2.5"], ["train.batch_size=2.5", "integer"]),
    (["train.batch_size=abc"], ["train.batch_size=abc", "integer"]),
    (["method.temperature=0"], ["method.temperature=0", "> 0"]),
    (["method.temperature=-1"], ["method.temperature", "> 0"]),
    (["batchformer.dropout=1.0"], ["batchformer.dropout=1.0", "< 1"]),
    (["batchformer.dropout=-0.1"], ["batchformer.dropout", ">= 0"]),
    (["run.device=tpu"], ["run.device=tpu", "'auto', 'cpu', 'cuda'"]),
    (["model.backbone=resnet19"], ["model.backbone=resnet19", "resnet18"]),
    (["data.name=mnist"], ["data.name=mnist", "fashion_mnist"]),
    (["optim.name=adam"], ["optim.name=adam", "adamw"]),
    (["run.precision=fp8"], ["run.precision=fp8", "bf16"]),
    (["batchformer.enabled=maybe"], ["batchformer.enabled=maybe", "true/false"]),
    (["optim.lr=nan"], ["optim.lr", "number"]),
    (["data.subset=1.5"], ["data.subset=1.5", "fraction"]),
    (["augment.crop_scale=[0.9, 0.2]"], ["augment.crop_scale", "minimum"]),
    (["augment.crop_scale=[0.2]"], ["augment.crop_scale", "2"]),
])
def test_bad_values_name_key_value_and_allowed(overrides, fragments):
    """Refused when the config is read, or (a name no registry holds: data.name, method.name)
    when it is resolved, where the registries are."""
    with pytest.raises(ConfigError) as exc:
        resolved(config.build({}, overrides))
    msg = str(exc.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


@pytest.mark.parametrize("item, fragment", [
    ("train.epochs", "expected key=value"),
    ("=3", "key before '=' is empty"),
    ("train.epochs=", "no value"),
    ("train.epochs=[1, 2", "not a YAML scalar"),
    ("train.epochs={a: 1}", "not a mapping"),
])
def test_malformed_set(item, fragment):
    with pytest.raises(ConfigError, match="malformed --set") as exc:
        config.build({}, [item])
    assert fragment in str(exc.value)


def test_unknown_section_and_key_in_file():
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        config.build({"optimizer": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        config.build({"optim": {"learning_rate": 0.1}})
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        config.build({"train": 5})


@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty"),
    (b"# only a comment\n", "is empty"),
    (b"- a\n- b\n", "must be a mapping"),
    (b"just a string", "must be a mapping"),
    (b"\x00\x01\x02binary", "binary"),
    (b"\xff\xfe\xfa not utf8", "not UTF-8"),
    (b"run: {output_dir: [unclosed\n", "not valid YAML"),
    (b"run: !!python/object/apply:os.system ['echo pwned']\n", "python tags are not allowed"),
    (b"train:\n  epochs: !!python/name:os.system\n", "python tags are not allowed"),
])
def test_bad_config_files(tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert fragment in str(exc.value) and str(path) in str(exc.value)


def test_missing_config_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)


def test_saved_yaml_is_plain(tmp_path):
    """config.yaml must be readable by yaml.safe_load (no python tags)."""
    cfg = config.build({}, ["optim.betas=[0.9, 0.95]"])
    data = yaml.safe_load(cfg.to_yaml())
    assert data["optim"]["betas"] == [0.9, 0.95]
