# ruff: noqa: E501 - the table quotes the papers' sentences whole
"""The paper configs under ``configs/paper/`` hold exactly the settings their papers state, and they load.

:data:`PAPER` lists, per config, every stated hyper-parameter with the sentence of the paper it comes from;
each value is checked in the YAML and, when the seeds are beside the checkout (``../shared/seeds``, as on CI),
each sentence is checked to be in the paper's text. The dry run builds the config on generated data of the
layout it expects (every dataset of its table), so a wrong dataset name, split or setting fails here and not
on a GPU cluster.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.layouts import on_generated_data

REPO = Path(__file__).resolve().parents[2]
SEEDS = REPO.parent / "shared" / "seeds"

#: config -> (seed file prefix, [(key path, value, sentence of the paper)]).
PAPER: dict[str, tuple[str, list[tuple[str, Any, str]]]] = {
    "a2s_msrab.yaml": (
        "001",
        [
            ("dataset", "msra-b", "training our framework on 3000 images"),
            ("split", "trainval", "training our framework on 3000 images"),
            ("image_size", 320, "images are resized to  $320 \\times 320$"),
            ("batch_size", 8, "The batch size is 8"),
            ("stage1.backbone.name", "resnet50", "Unsupervised ResNet-50 [\\[21\\]](#page-9-11) is employed as the encoder in both stages"),
            ("stage1_epochs", 20, "The first stage includes 20 epochs in total with an initial learning rate of 1"),
            ("stage1.lr", 1.0, "The first stage includes 20 epochs in total with an initial learning rate of 1"),
            ("stage1.lr_milestones", [0.5, 0.8], "The learning rate is decayed by a factor of 0.1 at 10-th and 16-th epochs"),
            ("stage1.lr_gamma", 0.1, "The learning rate is decayed by a factor of 0.1 at 10-th and 16-th epochs"),
            ("stage2_epochs", 25, "The second stage includes 25 epochs in total with an initial learning rate of 0.005"),
            ("stage2.lr", 0.005, "The second stage includes 25 epochs in total with an initial learning rate of 0.005"),
            ("stage2.lr_milestones", [0.6, 0.8], "The learning rate is decayed by a factor of 0.1 at 15-th and 20 th epochs"),
            ("stage2.optimizer", "sgd", "SGD is utilized as the optimizer of our framework for both stages"),
            ("stage2.hflip", True, "horizontal flipping is employed during the training process"),
            ("stage2.label_update", "olr", "an Online Label Rectifying (OLR) strategy is developed"),
            ("stage2.olr_lambda", 0.4, "is set to 0.4 for the rest of training epochs"),
            ("stage2.olr_warmup_epochs", 2, "is set to 1 for the first two epochs"),
            ("postprocess.crf", True, "we employ denseCRF  $(CRF)$  [\\[60\\]](#page-10-16) to refine the boundary"),
            ("eval", ["ECSSD", "MSRA-B", "DUT-O", "PASCAL-S", "DUTS-TE", "HKU-IS"], "ECSSD"),
        ],
    ),
}  # fmt: skip


def _get(config: dict[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = value[part]
    if key == "eval":
        return [entry["name"] for entry in value]
    return value


def _seed_text(prefix: str) -> str:
    files = sorted(SEEDS.glob(f"{prefix}_*.txt"))
    if not files:
        pytest.skip(f"no seed {prefix}_*.txt in {SEEDS} (the papers sit beside the checkout on CI)")
    return files[0].read_text(encoding="utf-8")


def test_every_paper_config_is_in_the_table() -> None:
    assert sorted(p.name for p in (REPO / "configs" / "paper").glob("*.yaml")) == sorted(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_hold_the_papers_values(name: str) -> None:
    config = yaml.safe_load((REPO / "configs" / "paper" / name).read_text())
    wrong = [
        (key, _get(config, key), value) for key, value, _ in PAPER[name][1] if _get(config, key) != value
    ]
    assert not wrong, f"{name}: (key, config, paper): {wrong}"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_the_quoted_sentences_are_the_papers(name: str) -> None:
    text = re.sub(r"\s+", " ", _seed_text(PAPER[name][0]))
    missing = [s for _, _, s in PAPER[name][1] if re.sub(r"\s+", " ", s) not in text]
    assert not missing, f"{name}: sentences not in the paper: {missing}"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_load_on_data_of_their_layout(name: str, tmp_path: Path) -> None:
    from usod.commands.pipeline import load_settings

    config = on_generated_data(yaml.safe_load((REPO / "configs" / "paper" / name).read_text()), tmp_path)
    built = load_settings(REPO / "configs" / "paper" / name, config)
    assert built.training_set(with_masks=False).files  # the training split exists in that layout
    assert not (tmp_path / "run").exists()
