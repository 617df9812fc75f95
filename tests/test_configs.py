"""Every YAML file under configs/ loads through its own entry point's --dry-run (validated, nothing built)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import yaml

import certify_diffsmooth
import eval_sde_adv
from training import train_aid, train_classifier, train_score_model
from utils.config import read_yaml

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yml"))


def eval_dry_run(path: Path, capsys, caplog) -> dict:
    """eval_sde_adv.py --dry-run: the printed resolved config."""
    assert eval_sde_adv.main(["--config", str(path), "--dry-run"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def certify_dry_run(path: Path, capsys, caplog) -> dict:
    """certify_diffsmooth.py --dry-run: the printed resolved config (utils.cli.dry_run_text)."""
    assert certify_diffsmooth.main(["--config", str(path), "--dry-run"]) is None
    return yaml.safe_load(capsys.readouterr().out)


def training_dry_run(main: Callable) -> Callable[[Path, object, object], dict]:
    """A training script's --dry-run: the printed resolved config (utils.cli.dry_run_text)."""
    def run(path: Path, capsys, caplog) -> dict:
        assert main(["--config", str(path), "--dry-run"]) == 0
        return yaml.safe_load(capsys.readouterr().out)

    return run


# the entry point of each config family, by folder and file-name prefix
LOADERS: dict[tuple[str, str], Callable] = {
    ("configs", ""): eval_dry_run,
    ("configs/robustbench", ""): eval_dry_run,
    ("configs/diffsmooth", ""): certify_dry_run,
    ("configs/train", "aid_"): training_dry_run(train_aid.main),
    ("configs/train", "classifier_"): training_dry_run(train_classifier.main),
    ("configs/train", "score_"): training_dry_run(train_score_model.main),
}


def loader_of(config: str) -> Callable:
    """The loader whose folder holds `config` and whose prefix starts its name (longest prefix wins)."""
    path = Path(config)
    matches = [(prefix, load) for (folder, prefix), load in LOADERS.items()
               if path.parent.as_posix() == folder and path.name.startswith(prefix)]
    assert matches, f"{config}: no entry point knows this config family; add it to LOADERS"
    return max(matches, key=lambda m: len(m[0]))[1]


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_loads_with_its_entry_point(config, capsys, caplog):
    raw = read_yaml(REPO / config)
    resolved = loader_of(config)(REPO / config, capsys, caplog)
    shared = [key for key in raw if key in resolved]
    assert shared, f"{config}: the resolved config shares no section with the file"
    for section in shared:  # every scalar the file sets survives into the resolved config (paths excepted)
        if isinstance(raw[section], dict):
            for key, value in raw[section].items():
                if not isinstance(value, (dict, list, str)) or key == "name":
                    assert resolved[section][key] == value, f"{config}: {section}.{key}"


def test_the_paper_configs_are_all_present():
    expected = {"configs/cifar10.yml", "configs/cifar10_L2.yml", "configs/imagenet_coup.yml",
                "configs/imagenet_diffpure.yml", "configs/diffsmooth/cifar10.yml", "configs/diffsmooth/imagenet.yml"}
    assert expected <= set(CONFIGS)
