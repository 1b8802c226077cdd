"""Checkpoint layouts of the field: which layout a file is in (from its keys), its backbone's
weights with heads, predictors, momentum encoders and queues dropped, and the key-name
conventions the backbone goes on to (torchvision, timm, detectron2).

Layouts read (besides sslkit's own ``last.pt``, handled in :mod:`sslkit.export`):

* ``moco``: facebookresearch/moco ``main_moco.py`` (MoCo v1 and v2):
  ``{'epoch', 'arch', 'state_dict', 'optimizer'}``; ``state_dict`` is the DDP-wrapped MoCo
  module: ``module.encoder_q.*`` (a torchvision ResNet whose ``fc`` is the head: one Linear
  for v1, ``fc.0`` / ``fc.2`` for v2's MLP), ``module.encoder_k.*``, ``module.queue``,
  ``module.queue_ptr``. The backbone: ``encoder_q`` minus ``fc``, as that repository's
  ``main_lincls.py`` loads it.
* ``moco-v3``: facebookresearch/moco-v3 ``main_moco.py``: ``{'epoch', 'arch', 'state_dict',
  'optimizer', 'scaler'}`` with ``module.base_encoder.*``, ``module.momentum_encoder.*``,
  ``module.predictor.*``. ``base_encoder`` is a torchvision ResNet whose ``fc`` is the
  projector, or timm's ``VisionTransformer`` (``vits.py``) whose ``head`` is the projector.
  The backbone: ``base_encoder`` minus ``fc`` / ``head``.
* ``deit``: ``{'model': timm ViT keys}``, e.g. what moco-v3's ``convert_to_deit.py`` writes.
* ``timm-vit``: a timm ``VisionTransformer`` state dict (``cls_token``, ``pos_embed``,
  ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
  ``norm``; ``head`` dropped).
* ``torchvision``: a torchvision ResNet (``fc`` dropped) or ViT (``heads`` dropped) state
  dict; sslkit's ``backbone.pt`` is one.

The ``module.`` prefix of DDP is optional everywhere. ViT names convert both ways between
timm's and torchvision's ``VisionTransformer`` (which sslkit's ViTs are): timm's ``attn.qkv``
weight (3D, D) holds the q, k, v rows in that order, as torchvision's ``in_proj_weight``.
"""
from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sslkit.errors import CheckpointError
from sslkit.models.backbones import sincos_2d_position_embedding

LAYOUTS: dict[str, str] = {
    "sslkit": "sslkit (checkpoints/last.pt, backbone.pt)",
    "moco": "facebookresearch/moco v1/v2 ({'state_dict': module.encoder_q.*})",
    "moco-v3": "facebookresearch/moco-v3 ResNet or ViT ({'state_dict': module.base_encoder.*})",
    "deit": "DeiT format ({'model': timm ViT keys}, moco-v3 convert_to_deit.py)",
    "timm-vit": "a timm VisionTransformer state dict",
    "torchvision": "a torchvision ResNet or ViT state dict",
}

State = "OrderedDict[str, torch.Tensor]"


@dataclass(frozen=True)
class Backbone:
    """A backbone taken out of a checkpoint: its weights (no head), the layout it came from
    (a key of :data:`LAYOUTS`) and its key names (:func:`naming`)."""

    state: "OrderedDict[str, torch.Tensor]"
    layout: str
    naming: str


# --------------------------------------------------------------------------- key names
def naming(state: dict) -> str:
    """The key-name convention of a backbone state dict: ``resnet`` (torchvision's ResNet
    names, which timm's ResNets share), ``torchvision-vit``, ``timm-vit`` or ``other``."""
    if "class_token" in state and "conv_proj.weight" in state:
        return "torchvision-vit"
    if "cls_token" in state and "patch_embed.proj.weight" in state:
        return "timm-vit"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return "resnet"
    return "other"


_VIT_TOP = {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding",
            "patch_embed.proj.weight": "conv_proj.weight",
            "patch_embed.proj.bias": "conv_proj.bias",
            "norm.weight": "encoder.ln.weight", "norm.bias": "encoder.ln.bias"}
# per block: timm's name after "blocks.N." -> torchvision's after "encoder.layers.encoder_layer_N."
_VIT_BLOCK = {"norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
              "attn.qkv.weight": "self_attention.in_proj_weight",
              "attn.qkv.bias": "self_attention.in_proj_bias",
              "attn.proj.weight": "self_attention.out_proj.weight",
              "attn.proj.bias": "self_attention.out_proj.bias",
              "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
              "mlp.fc1.weight": "mlp.0.weight", "mlp.fc1.bias": "mlp.0.bias",
              "mlp.fc2.weight": "mlp.3.weight", "mlp.fc2.bias": "mlp.3.bias"}
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_TV_BLOCK = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)")


def _rename(state: dict, top: dict, block_re: re.Pattern, block: dict, block_fmt: str,
            source: str, target: str) -> "OrderedDict[str, torch.Tensor]":
    out = OrderedDict()
    for key, value in state.items():
        m = block_re.fullmatch(key)
        new = (block_fmt.format(m.group(1)) + block[m.group(2)]
               if m and m.group(2) in block else top.get(key))
        if new is None:
            raise CheckpointError(f"the {source} ViT key '{key}' has no counterpart in "
                                  f"{target}'s VisionTransformer (layer scale, register or "
                                  f"distillation tokens, a pooled fc_norm, a conv stem are not "
                                  f"supported); sslkit reads plain ViTs with a class token")
        out[new] = value
    return out


def timm_vit_to_torchvision(state: dict) -> "OrderedDict[str, torch.Tensor]":
    """timm ``VisionTransformer`` names -> torchvision's (sslkit's ViT); same tensors."""
    return _rename(state, _VIT_TOP, _TIMM_BLOCK, _VIT_BLOCK,
                   "encoder.layers.encoder_layer_{}.", "timm", "torchvision")


def torchvision_vit_to_timm(state: dict) -> "OrderedDict[str, torch.Tensor]":
    """torchvision ``VisionTransformer`` names (sslkit's ViT) -> timm's; same tensors."""
    return _rename(state, {v: k for k, v in _VIT_TOP.items()}, _TV_BLOCK,
                   {v: k for k, v in _VIT_BLOCK.items()}, "blocks.{}.", "torchvision", "timm")


def match_names(state: dict, target_keys) -> dict:
    """``state`` with its ViT names converted to the convention of ``target_keys`` (the keys
    of the module it is loaded into: sslkit's ViT or a ``timm/<name>`` ViT); unchanged
    otherwise (ResNet names are shared by torchvision and timm)."""
    target = naming(dict.fromkeys(target_keys))
    have = naming(state)
    if have == "timm-vit" and target == "torchvision-vit":
        return timm_vit_to_torchvision(state)
    if have == "torchvision-vit" and target == "timm-vit":
        return torchvision_vit_to_timm(state)
    return state


def position_embedding_note(state: dict, source: str) -> str | None:
    """One line when a ViT's position embedding is not the fixed 2-D sin-cos one sslkit
    (and MoCo-v3) computes, i.e. a learned one (DeiT, supervised timm models); None when it
    is (max difference <= 1e-4) or there is none. The checkpoint's embedding is what loads."""
    pe = state.get("encoder.pos_embedding", state.get("pos_embed"))
    if pe is None or pe.dim() != 3:
        return None
    tokens, dim = pe.shape[1], pe.shape[2]
    grid = int(round((tokens - 1) ** 0.5))
    if grid * grid != tokens - 1 or dim % 4:
        return (f"note: '{source}' has a position embedding of {tokens} tokens that is not "
                f"sslkit's 2-D sin-cos one; the checkpoint's embedding is loaded")
    diff = (pe.float() - sincos_2d_position_embedding(grid, dim)).abs().max().item()
    if diff <= 1e-4:
        return None
    return (f"note: '{source}' has a learned position embedding (max difference {diff:.3g} "
            f"from the fixed 2-D sin-cos one of MoCo-v3 and sslkit); the checkpoint's "
            f"embedding is loaded, not recomputed")


# --------------------------------------------------------------------------- layouts
def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, dict) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _strip(state: dict, prefix: str) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v)
                       for k, v in state.items())


def _take(state: dict, prefix: str, drop: tuple[str, ...]) -> "OrderedDict[str, torch.Tensor]":
    """The entries under ``prefix`` (removed) except those starting with ``drop``."""
    return OrderedDict((k[len(prefix):], v) for k, v in state.items()
                       if k.startswith(prefix) and not k[len(prefix):].startswith(drop))


def _heads_dropped(state: dict) -> tuple["OrderedDict[str, torch.Tensor]", str]:
    """A backbone's own state dict without its classifier, and its naming."""
    name = naming(state)
    drop = {"resnet": ("fc.",), "torchvision-vit": ("heads.",),
            "timm-vit": ("head.",)}.get(name, ())
    return OrderedDict((k, v) for k, v in state.items() if not k.startswith(drop)), name


def _describe(obj: Any) -> str:
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}"
    keys = [repr(k) for k in list(obj)[:4]]
    return "keys " + ", ".join(keys) + (", ..." if len(obj) > 4 else "")


def unknown_layout(source: str, obj: Any) -> CheckpointError:
    return CheckpointError(f"'{source}' is in no checkpoint layout sslkit reads (found "
                           f"{_describe(obj)}); it reads: " + "; ".join(LAYOUTS.values()))


def read_foreign(obj: Any, source: str) -> Backbone:
    """The backbone of a file loaded with ``torch.load`` that is not an sslkit training
    checkpoint (see the module docstring for the layouts); anything else is a one-line
    CheckpointError naming the layouts sslkit reads."""
    wrapper = None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            wrapper, inner = key, obj[key]
            break
    else:
        inner = obj
    if not _is_state_dict(inner):
        raise unknown_layout(source, obj)
    state = _strip(inner, "module.")
    if any(k.startswith("encoder_q.") for k in state):
        backbone = _take(state, "encoder_q.", ("fc.",))
        return Backbone(backbone, "moco", naming(backbone))
    if any(k.startswith("base_encoder.") for k in state):
        vit = "base_encoder.cls_token" in state
        backbone = _take(state, "base_encoder.", ("head.",) if vit else ("fc.",))
        return Backbone(backbone, "moco-v3", naming(backbone))
    backbone, name = _heads_dropped(state)
    if name == "timm-vit":
        return Backbone(backbone, "deit" if wrapper == "model" else "timm-vit", name)
    if name == "other" and wrapper is not None:  # a wrapped state dict of no known model
        raise unknown_layout(source, obj)
    return Backbone(backbone, "torchvision", name)


# --------------------------------------------------------------------------- detectron2
_BN = re.compile(r"bn(\d)")


def detectron2_key(key: str) -> str:
    """torchvision ResNet name -> detectron2's (the renaming of facebookresearch/moco
    ``detection/convert-pretrain-to-detectron2.py``): the stem's ``conv1`` / ``bn1`` under
    ``stem.``; ``layerN`` -> ``res{N+1}``; ``bnK`` -> ``convK.norm``; ``downsample.0`` ->
    ``shortcut``, ``downsample.1`` -> ``shortcut.norm``."""
    parts = key.split(".")
    if parts[0].startswith("layer") and parts[0][5:].isdigit():
        head = [f"res{int(parts[0][5:]) + 1}", parts[1]]
        rest = parts[2:]
    else:
        head, rest = ["stem"], parts
    if rest[:1] == ["downsample"] and len(rest) > 2 and rest[1] in ("0", "1"):
        rest = ["shortcut"] + (["norm"] if rest[1] == "1" else []) + rest[2:]
    elif rest and _BN.fullmatch(rest[0]):
        rest = [f"conv{rest[0][2:]}", "norm"] + rest[1:]
    return ".".join(head + rest)


class _PortablePickler(pickle.Pickler):
    """Pickles numpy arrays as ``numpy.ndarray(shape, dtype, bytearray)``: loadable by numpy
    1.x and 2.x alike (a numpy 2 array pickles as ``numpy._core...``, which numpy before
    1.26.4 cannot find), and writable once loaded."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray and not obj.dtype.hasobject:
            return np.ndarray, (obj.shape, obj.dtype.str, bytearray(obj.tobytes(order="C")))
        return NotImplemented


def dump_detectron2(obj: dict, fh: Any) -> None:
    """Write :func:`to_detectron2`'s object to an open binary file (pickle protocol 2, which
    every Python 3 reads; detectron2 loads it with ``pickle.load(f, encoding="latin1")``)."""
    _PortablePickler(fh, protocol=2).dump(obj)


def to_detectron2(state: dict, author: str = "sslkit") -> dict:
    """The pickle object detectron2 reads for a ResNet backbone in torchvision names:
    ``{"model": {detectron2 name: numpy array}, "__author__": author,
    "matching_heuristics": True}`` (detectron2 maps the names to its ResNet itself)."""
    name = naming(state)
    if name != "resnet":
        what = "a ViT" if name.endswith("vit") else "not a ResNet"
        raise CheckpointError(f"--format detectron2 writes ResNet backbones (detectron2's "
                              f"ResNet); this backbone is {what}; use --format timm or "
                              f"torchvision")
    model = {detectron2_key(k): v.detach().cpu().numpy() for k, v in state.items()}
    return {"model": model, "__author__": author, "matching_heuristics": True}
