"""Image resizing shared by the dataset and the agent, so training and acting see identical pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_images(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 HWC images ``[..., H, W, 3]`` to uint8 CHW ``[..., 3, size, size]``.

    Uses antialiased bilinear interpolation (area-like when shrinking). Images already at ``size``
    are only transposed, so stored data at the model's size costs nothing here.
    """
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.dtype != torch.uint8 or x.ndim < 3 or x.shape[-1] != 3:
        raise ValueError(
            f"expected uint8 RGB images shaped [..., H, W, 3], got dtype {x.dtype} shape {tuple(x.shape)}"
        )
    lead, (h, w) = x.shape[:-3], x.shape[-3:-1]
    x = x.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    if (h, w) != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp_(0, 255).to(torch.uint8)
    return x.contiguous().reshape(*lead, 3, size, size)
