"""Training configs are validated like the pipeline's: one line naming the key, and inheritance by `base:`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pgr.model_files import ModelFileMissing
from pgr.paths import CONFIGS
from pgr.settings import SettingsError
from training.config import TrainConfig, load_config


@pytest.mark.parametrize("name", ["train_cpu.yaml", "train_cpu_occluded_duke.yaml", "train_gpu.yaml"])
def test_shipped_training_configs_are_valid(name):
    assert isinstance(load_config(CONFIGS / name, check_files=False), TrainConfig)


def test_the_occluded_duke_config_differs_from_its_base_only_where_it_says():
    base = load_config(CONFIGS / "train_cpu.yaml", check_files=False).model_dump()
    occ = load_config(CONFIGS / "train_cpu_occluded_duke.yaml", check_files=False).model_dump()
    own = set(yaml.safe_load((CONFIGS / "train_cpu_occluded_duke.yaml").read_text())) - {"base"}
    assert {k for k in base if base[k] != occ[k]} == own
    assert occ["dataset"] == "occluded_duke" and occ["init_heads"] is False and occ["epochs"] == 4


def test_defaults_fill_nested_sections():
    cfg = load_config({"optim": {"lr": 1e-4}, "eval": {"enabled": False}}, check_files=False)
    assert cfg.optim.lr == 1e-4 and cfg.optim.warmup_epochs == 2 and cfg.eval.batch == 64
    assert cfg.input_size == (256, 128) and cfg.model.weights.is_absolute()


@pytest.mark.parametrize(
    "config, why",
    [
        ({"optim": {"lrr": 1.0}}, r"optim\.lrr: Extra inputs are not permitted"),
        ({"epocs": 3}, r"epocs: Extra inputs are not permitted"),
        ({"epochs": "ten"}, r"epochs: Input should be a valid integer"),
        ({"amp": "fp8"}, r"amp: Input should be 'bf16', 'fp16' or 'none'"),
        ({"input_size": [256]}, r"input_size"),
    ],
)
def test_mistakes_name_the_key_in_one_line(config, why):
    with pytest.raises(SettingsError, match=why) as err:
        load_config(config, check_files=False)
    assert "\n" not in str(err.value)


def test_missing_files_name_what_is_missing(tmp_path: Path):
    with pytest.raises(SettingsError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "exp.yaml").write_text("base: nope.yaml\nepochs: 3\n")
    with pytest.raises(SettingsError, match="exp.yaml: base: config file not found"):
        load_config(tmp_path / "exp.yaml")
    with pytest.raises(ModelFileMissing, match=r"model\.weights"):
        load_config({"model": {"weights": str(tmp_path / "no_such_weights.pt")}})


def test_an_experiment_holds_only_what_differs(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("epochs: 10\noptim: {lr: 1.0e-3, warmup_epochs: 1}\nseed: 1\n")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "more.yaml").write_text("base: ../base.yaml\noptim: {lr: 5.0e-4}\nseed: 2\n")
    cfg = load_config(tmp_path / "exp" / "more.yaml", check_files=False)
    assert (cfg.epochs, cfg.optim.lr, cfg.optim.warmup_epochs, cfg.seed) == (10, 5e-4, 1, 2)


def test_the_training_command_reports_config_errors_in_one_line(tmp_path: Path, capsys):
    from training.train import main

    (tmp_path / "exp.yaml").write_text(f"base: {CONFIGS / 'train_cpu.yaml'}\nloss: {{w_idd: 1}}\n")
    assert main(["--config", str(tmp_path / "exp.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "loss.w_idd: Extra inputs are not permitted" in err
