"""PGR features from a frozen OpenVINO re-ID network and heads trained on its maps (`reid.map_heads`).

One OpenVINO inference per batch gives the 16 x 8 map and the network's embedding; the heads (a few
hundred thousand parameters, torch on the CPU) turn them into instance, part and pixel features.

>>> ex = OpenVinoPGRExtractor(Path("pgr_0277_market1501.pt"), Path("0277.xml"))  # doctest: +SKIP
>>> f = ex.extract([crop])[0]  # doctest: +SKIP
>>> f.instance.shape, f.parts.shape, f.pixels.shape[1]  # doctest: +SKIP
((256,), (5, 256), 64)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pgr.messages import CropFeatures
from pgr.torch_threads import one_torch_thread
from reid.map_heads import MapHeads
from reid.openvino_backbone import OpenVinoBackbone
from reid.pgr_extractor import crop_features
from reid.pgr_model import PGROutput
from reid.pixel_projection import pixel_projection


class OpenVinoPGRExtractor:
    """`FeatureExtractor` over an OpenVINO IR and its trained map heads."""

    def __init__(
        self,
        heads: Path | MapHeads,
        ir: Path,
        pixel_dim: int | None = 64,
        batch_size: int = 32,
        projection_seed: int = 0,
        threads: int = 0,
        part_dtype: type[np.floating] = np.float16,
        pixel_dtype: type[np.floating] = np.float16,
        precision: str = "auto",
    ) -> None:
        self.heads = (heads if isinstance(heads, MapHeads) else MapHeads.load(heads)).eval()
        self.backbone = OpenVinoBackbone(ir, batch=batch_size, threads=threads, precision=precision)
        trained_on, channels = self.heads.config.backbone, self.heads.config.in_channels
        if self.backbone.name != trained_on:
            raise ValueError(f"{heads}: heads trained on {trained_on!r}, not on {self.backbone.name!r}")
        if self.backbone.channels != channels:
            raise ValueError(
                f"{heads}: heads take {channels} channels, the IR gives {self.backbone.channels}"
            )
        self.batch_size = batch_size
        self.input_size = (self.backbone.height, self.backbone.width)
        self.part_dtype, self.pixel_dtype = part_dtype, pixel_dtype
        self.projection = pixel_projection(self.heads.dim, pixel_dim, projection_seed)
        stem = heads.stem if isinstance(heads, Path) else "in-memory"
        px = "" if self.projection is None else f"-px{pixel_dim}s{projection_seed}"
        self.name = f"pgr-{self.backbone.name}-{stem}{px}"

    def features_of_maps(self, maps: np.ndarray, embeddings: np.ndarray) -> list[CropFeatures]:
        """Stored features from backbone maps (n, c, h, w) and embeddings (n, e) already computed; torch on
        one thread (`pgr.torch_threads`: the heads are small work, and the stage shares the machine)."""
        with one_torch_thread():
            return features_of_maps(
                self.heads, maps, embeddings, self.projection, self.part_dtype, self.pixel_dtype
            )

    @torch.inference_mode()
    def model_output(self, crops: list[np.ndarray]) -> PGROutput:
        """The heads' whole output for one batch of BGR crops (maps, parts, labels: for figures)."""
        maps, embs = self.backbone.run(crops)
        return self.heads(torch.from_numpy(maps), torch.from_numpy(embs))

    def extract(self, crops: list[np.ndarray]) -> list[CropFeatures]:
        """Features for a batch of BGR uint8 crops of any size."""
        result: list[CropFeatures] = []
        for start in range(0, len(crops), self.batch_size):
            maps, embs = self.backbone.run(crops[start : start + self.batch_size])
            result.extend(self.features_of_maps(maps, embs))
        return result


@torch.inference_mode()
def features_of_maps(
    heads: MapHeads,
    maps: np.ndarray,
    embeddings: np.ndarray,
    projection: torch.Tensor | None,
    part_dtype: type[np.floating] = np.float16,
    pixel_dtype: type[np.floating] = np.float16,
) -> list[CropFeatures]:
    """What the services store for crops whose backbone maps (n, c, h, w) and embeddings (n, e) are known:
    the heads (in eval mode) and `crop_features`, without the IR (cached maps, training-time validation)."""
    out = heads(torch.from_numpy(np.asarray(maps)), torch.from_numpy(np.asarray(embeddings)))
    return crop_features(out, projection, part_dtype, pixel_dtype)
