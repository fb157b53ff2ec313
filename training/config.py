"""Training configuration: a validated `TrainConfig`, read like every other config (pgr.settings).

An experiment file may say `base: train_cpu.yaml` (relative to it) and hold only what differs. Relative
`data_root`, `output_dir` and `init_from` are taken from the working directory (the repository root in
every documented command); `model.weights` names a file under the shared assets' weights unless absolute.

>>> cfg = load_config({"epochs": 2, "optim": {"lr": 1e-4}})
>>> cfg.epochs, cfg.optim.lr, cfg.optim.warmup_epochs
(2, 0.0001, 2)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from pgr.model_files import require_model_file
from pgr.paths import asset_weights
from pgr.settings import StrictModel, read_config, validate_config


class ModelConfig(StrictModel):
    backbone: str = "mobilenetv2"
    weights: Path | None = Field(
        Path("mobilenetv2_imagenet_features.pt"),
        description="backbone weights (ImageNet or re-ID), under $PGR_ASSETS/weights unless absolute",
        validate_default=True,
    )
    num_parts: int = Field(5, ge=1)
    reduce_dim: int | None = Field(None, ge=1)
    backbone_embedding: bool = Field(
        False, description="x_ins through the backbone's own embedding layer (OSNet's fc) after pooling"
    )
    neck: bool = Field(False, description="BN-necks kept in the model and used at inference (BoT)")
    freeze_backbone_stages: int = Field(0, ge=0, description="the first N top-level children of the backbone")

    @field_validator("weights", mode="before")
    @classmethod
    def _under_assets(cls, v: Any) -> Any:
        return asset_weights(v) if isinstance(v, str | Path) else v


class OptimConfig(StrictModel):
    lr: float = Field(3.5e-4, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(2, ge=0, description="linear from lr/10 over these epochs")
    schedule: Literal["cosine", "step"] = Field(
        "cosine", description="cosine (to lr * min_factor) or step (x gamma at each milestone epoch)"
    )
    min_factor: float = Field(0.01, ge=0)
    milestones: list[int] = [40, 70]
    gamma: float = Field(0.1, gt=0)


class LossConfig(StrictModel):
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    margin: float = Field(0.3, ge=0)
    w_id: float = 1.0
    w_tri: float = 1.0
    w_part_id: float = 1.0
    w_part_tri: float = 1.0
    w_psi: float = 1.0


class AugmentConfig(StrictModel):
    flip_p: float = Field(0.5, ge=0, le=1)
    pad: int = Field(10, ge=0)
    erase_p: float = Field(0.5, ge=0, le=1)


class EvalConfig(StrictModel):
    enabled: bool = True
    every: int = Field(0, ge=0, description="evaluate every N epochs; 0: only after the last")
    batch: int = Field(64, ge=1)
    queries: int = Field(0, ge=0, description="the first N queries; 0: all")
    pixel_dim: int | None = Field(64, ge=8)


class TrainConfig(StrictModel):
    data_root: Path = Path("data")
    dataset: str = "market1501"
    output_dir: Path = Path("runs/pgr")
    seed: int = 0
    device: str = "auto"
    init_from: Path | None = Field(
        None, description="a training checkpoint (another run's last.pt) whose model starts this run"
    )
    init_heads: bool = Field(
        True, description="and its BN-neck/classifier heads too (false when the identities differ)"
    )
    model: ModelConfig = ModelConfig()
    input_size: tuple[int, int] = (256, 128)
    epochs: int = Field(20, ge=1)
    max_images_per_epoch: int | None = Field(None, ge=1, description="None: every training image about once")
    p: int = Field(8, ge=2, description="identities per batch")
    k: int = Field(4, ge=2, description="images per identity in a batch")
    num_workers: int = Field(0, ge=0)
    pseudo_every: int = Field(4, ge=1, description="recompute the part pseudo labels every N epochs")
    pseudo_batch: int = Field(64, ge=1)
    foreground_rule: Literal["image", "identity"] = Field(
        "image", description="pseudo labels' foreground: per-image 2-means, or ISP's per-identity rule"
    )
    centre_prior: float = Field(0.0, ge=0, le=1, description="damping of the edge columns before the 2-means")
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    amp: Literal["bf16", "fp16", "none"] = Field("bf16", description="CUDA only; fp16 with a GradScaler")
    eval: EvalConfig = EvalConfig()
    progress: bool = True


def load_config(config: Mapping[str, Any] | str | Path, check_files: bool = True) -> TrainConfig:
    """A TrainConfig from a dict or a YAML file (which may name a `base:`); defaults fill what is missing.

    Raises pgr.settings.SettingsError naming the key (unknown, wrong type, bad value, missing base file)
    and, with `check_files`, ModelFileMissing for backbone weights that are not there (`init_from` is
    checked when a run starts from it: a resumed run does not need it).
    """
    if isinstance(config, str | Path):
        cfg = validate_config(TrainConfig, read_config(config), str(config))
    else:
        cfg = validate_config(TrainConfig, config, "training config")
    if check_files and cfg.model.weights is not None:
        require_model_file(cfg.model.weights, "backbone weights (model.weights)")
    return cfg
