"""The name -> class registry of the methods (``method.name``)."""
from __future__ import annotations

from torch import nn

from sslkit.methods.moco_v2 import MoCoV2
from sslkit.methods.moco_v3 import MoCoV3

METHODS: dict[str, type[nn.Module]] = {"mocov2": MoCoV2, "mocov3": MoCoV3}
