"""The augmentation grid: originals and their two training views as one labelled image, for
TensorBoard (``augment/original_view1_view2``) and ``python -m sslkit.preview``."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

GRID_LABELS = ("original", "view 1", "view 2")


def _label(text: str, scale: int) -> Image.Image:
    """``text`` in PIL's built-in bitmap font (no font file needed), enlarged ``scale`` times
    with nearest neighbours so that it stays sharp."""
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text)
    img = Image.new("L", (right - left + 2, bottom - top + 2), 255)
    ImageDraw.Draw(img).text((1 - left, 1 - top), text, fill=0)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


@torch.no_grad()
def augmentation_grid(originals: torch.Tensor, view1: torch.Tensor, view2: torch.Tensor,
                      labels: Sequence[str] = GRID_LABELS, min_side: int = 96,
                      pad: int = 2) -> torch.Tensor:
    """A (3, H, W) float grid in [0, 1] (TensorBoard's ``add_image``, the preview PNG).

    Rows: ``originals``, ``view1``, ``view2``, each (n, C, S, S) in [0, 1] (1 or 3 channels),
    each labelled on the left in letters about a fifth of a row high, so that they stay
    readable when TensorBoard shows the grid as a thumbnail. Images smaller than
    ``min_side`` are upscaled with nearest neighbours (so 28 px thumbnails stay sharp).
    """
    rows = [r.float().cpu().clamp(0, 1) for r in (originals, view1, view2)]
    rows = [r.expand(-1, 3, -1, -1) if r.shape[1] == 1 else r for r in rows]
    side = rows[0].shape[-1]
    if side < min_side:
        factor = -(-min_side // side)
        rows = [F.interpolate(r, scale_factor=factor, mode="nearest") for r in rows]
    n, size = rows[0].shape[0], rows[0].shape[-1]
    body = make_grid(torch.cat(rows), nrow=n, padding=pad, pad_value=1.0)
    scale = max(1, size // 45)  # the bitmap font's letters are ~9 px high
    texts = [_label(t, scale) for t in labels]
    label_w = max(t.width for t in texts) + 8
    canvas = Image.new("L", (label_w, body.shape[1]), 255)
    for k, text in enumerate(texts):
        top = pad + k * (size + pad) + (size - text.height) // 2
        canvas.paste(text, (4, max(top, 0)))
    margin = torch.from_numpy(np.asarray(canvas, dtype=np.float32).copy() / 255.0)
    return torch.cat([margin.expand(3, -1, -1), body], dim=2)
