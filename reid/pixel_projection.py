"""Keeping stored pixel features small: a fixed random orthogonal projection, float16, and a byte count.

A random projection with orthonormal columns preserves cosines approximately (Johnson-Lindenstrauss; the
error shrinks like 1/sqrt(dim_out)) and needs no training data. It is a pure function of
(dim_in, dim_out, seed), so a query and a gallery extracted by separate processes project identically.
A learned reduction (the model's `reduce_dim`) is the better option once a trained checkpoint exists.
"""

from __future__ import annotations

import numpy as np
import torch

from pgr.messages import CropFeatures


def orthogonal_projection(dim_in: int, dim_out: int, seed: int = 0) -> torch.Tensor:
    """A (dim_in, dim_out) float32 matrix with orthonormal columns, the same for the same arguments."""
    if not 0 < dim_out <= dim_in:
        raise ValueError(f"need 0 < dim_out <= dim_in, got {dim_out} and {dim_in}")
    gen = torch.Generator().manual_seed(seed)
    gauss = torch.randn(dim_in, dim_out, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    return (q * torch.sign(torch.diagonal(r))).float()  # sign fix makes the result unique


def pixel_projection(dim_in: int, pixel_dim: int | None, seed: int = 0) -> torch.Tensor | None:
    """The fixed projection that stores pixel features at `pixel_dim`; None when they keep `dim_in`."""
    if pixel_dim is None or pixel_dim >= dim_in:
        return None
    return orthogonal_projection(dim_in, pixel_dim, seed)


def bytes_per_detection(features: CropFeatures) -> int:
    """Bytes of every array stored for one detection (instance, parts, visibility, pixels, coords)."""
    arrays = (
        features.instance,
        features.parts,
        features.part_visibility,
        features.pixels,
        features.pixel_coords,
    )
    return sum(int(np.asarray(a).nbytes) for a in arrays if a is not None)
