"""The PGR feature extractor: BGR crops in, instance / part / pixel features out (`FeatureExtractor`).

Without a PGR checkpoint the backbone is ImageNet-initialised and the part classifier psi is untrained
(random), so parts, visibility and foreground are arbitrary; the name then says "untrained".

>>> ex = PGRExtractor("mobilenetv2", Path("mobilenetv2_imagenet.pt"), pixel_dim=128)  # doctest: +SKIP
>>> f = ex.extract([crop])[0]  # doctest: +SKIP
>>> f.instance.shape, f.parts.shape, f.pixels.shape[1], f.pixel_coords.dtype  # doctest: +SKIP
((1280,), (5, 1280), 128, dtype('int16'))
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pgr.messages import CropFeatures
from pgr.model_files import model_cache_dir
from reid.extractor import crops_to_tensor, pick_device
from reid.pgr_model import PGRConfig, PGRModel, PGROutput
from reid.pixel_projection import pixel_projection


class PGRExtractor:
    """PGR features per crop: L2-normalised instance (float32) and parts (`part_dtype`), part visibility,
    and the foreground pixel vectors (L2-normalised, optionally projected to `pixel_dim` by a fixed
    orthogonal projection, stored as `pixel_dtype`) with their int16 (row, col) feature-map cells.

    The model is a checkpoint's, or a given `PGRModel` (e.g. one being trained: the extractor sets it to
    eval mode, moves it to `device` and to channels-last, so pass a copy to keep training it unchanged),
    or an untrained part classifier on the backbone's ImageNet `weights`.
    """

    def __init__(
        self,
        backbone: str | None = "mobilenetv2",
        weights: Path | None = None,
        checkpoint: Path | None = None,
        device: str = "auto",
        input_size: tuple[int, int] = (256, 128),
        pixel_dtype: type[np.floating] = np.float16,
        pixel_dim: int | None = None,
        part_dtype: type[np.floating] = np.float16,
        num_parts: int = 5,
        reduce_dim: int | None = None,
        batch_size: int = 64,
        projection_seed: int = 0,
        model: PGRModel | None = None,
        runtime: str = "torch",
        export_dir: Path | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.input_size = input_size
        self.pixel_dtype, self.part_dtype, self.batch_size = pixel_dtype, part_dtype, batch_size
        given = model is not None
        if model is not None:
            if checkpoint is not None or weights is not None:
                raise ValueError("give a model, a checkpoint or backbone weights, not more than one")
            if model.config.backbone != backbone:
                raise ValueError(f"the model's backbone is {model.config.backbone!r}, not {backbone!r}")
        elif checkpoint is not None:
            model = PGRModel.load(checkpoint)
            if backbone is not None and model.config.backbone != backbone:
                raise ValueError(
                    f"{checkpoint}: checkpoint backbone is {model.config.backbone!r}, not {backbone!r}"
                )
        else:
            if backbone is None:
                raise ValueError("an untrained PGR extractor needs a backbone name")
            model = PGRModel(PGRConfig(backbone, num_parts, reduce_dim), weights)
        if runtime not in ("torch", "openvino"):
            raise ValueError(f"unknown runtime {runtime!r}: torch or openvino")
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        if runtime == "openvino":
            self.model = self._openvino(model, checkpoint, export_dir)
        self.projection = pixel_projection(model.dim, pixel_dim, projection_seed)
        if self.projection is not None:
            self.projection = self.projection.to(self.device)
        trained = "-untrained" if checkpoint is None else f"-{Path(checkpoint).stem}"
        if given:
            trained = "-in-memory"
        px = "" if self.projection is None else f"-px{pixel_dim}s{projection_seed}"
        self.name = f"pgr-{model.config.backbone}{trained}{px}"

    def _openvino(self, model: PGRModel, checkpoint: Path | None, export_dir: Path | None):
        """The model exported to OpenVINO (once per checkpoint file, kept in `export_dir`)."""
        from reid.openvino_export import OpenVinoPGRModel, export_openvino

        if checkpoint is None:
            raise ValueError("runtime openvino needs a checkpoint file (its export is kept by its hash)")
        if self.device.type != "cpu":
            raise ValueError("runtime openvino runs on the CPU; use runtime torch on a GPU")
        digest = hashlib.sha1(Path(checkpoint).read_bytes()).hexdigest()[:12]
        folder = export_dir or model_cache_dir() / "openvino"
        xml = folder / f"{Path(checkpoint).stem}-{digest}-{self.input_size[0]}x{self.input_size[1]}.xml"
        if not xml.exists():
            export_openvino(model, xml, self.input_size)
        return OpenVinoPGRModel(xml, model.config.num_parts)

    @torch.inference_mode()
    def extract(self, crops: list[np.ndarray]) -> list[CropFeatures]:
        """Features for a batch of BGR uint8 crops of any size."""
        result: list[CropFeatures] = []
        for start in range(0, len(crops), self.batch_size):
            result.extend(self._extract_batch(crops[start : start + self.batch_size]))
        return result

    def _extract_batch(self, crops: list[np.ndarray]) -> list[CropFeatures]:
        return crop_features(self.model_output(crops), self.projection, self.part_dtype, self.pixel_dtype)

    @torch.inference_mode()
    def model_output(self, crops: list[np.ndarray]) -> PGROutput:
        """The model's whole output for one batch of BGR crops (maps, parts, labels: for figures)."""
        images = crops_to_tensor(crops, self.input_size, self.device)
        # mixed precision on a GPU (the pooling and similarities are computed in float32 downstream)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
            return self.model(images)


def crop_features(
    out: PGROutput,
    projection: torch.Tensor | None,
    part_dtype: type[np.floating] = np.float16,
    pixel_dtype: type[np.floating] = np.float16,
) -> list[CropFeatures]:
    """Per-crop stored features of a model output: L2-normalised instance (float32) and parts, visibility,
    and the foreground cells' (projected, L2-normalised) pixel vectors with their (row, col)."""
    instance = F.normalize(out.instance_out, dim=-1).cpu().numpy().astype(np.float32)
    parts = F.normalize(out.parts_out, dim=-1).cpu().numpy().astype(part_dtype)
    visible = out.visibility.cpu().numpy()
    pixels = out.features.permute(0, 2, 3, 1)  # (n, h, w, d)
    if projection is not None:
        pixels = pixels @ projection
    pixels = F.normalize(pixels, dim=-1)
    result = []
    for i, fg in enumerate(out.foreground):
        result.append(
            CropFeatures(
                instance=instance[i],
                parts=parts[i],
                part_visibility=visible[i],
                pixels=pixels[i][fg].cpu().numpy().astype(pixel_dtype),
                pixel_coords=fg.nonzero().cpu().numpy().astype(np.int16),
            )
        )
    return result
