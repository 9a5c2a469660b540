"""Two label runs into one round with different models: the second is refused, never mixed in.

The settings check before a round starts reads the manifest without holding its lock, so two processes
starting together could both pass it; the round is claimed again under the lock
(:meth:`PseudoLabelStore.begin_round` with ``same=``), where the second process finds the first one's
checkpoint recorded and stops.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import usod.labels.rounds
from tests.helpers.models import TINY
from usod.data.datamodules import get_datamodule
from usod.data.io import file_sha256
from usod.data.synth import write_dataset
from usod.labels import PseudoLabelStore, write_label_round
from usod.labels.rounds import RAW_KEYS, input_identity
from usod.models.base import save_module
from usod.models.saliency_detector import SaliencyDetector


@pytest.fixture
def setup(tmp_path: Path):
    data = write_dataset(tmp_path / "data", "rgb", 6, size=(32, 32))
    dm = get_datamodule("folder", root=data, image_size=32, batch_size=2, num_workers=0, augment=False)
    dm.setup("predict")
    first = save_module(SaliencyDetector(backbone=TINY, channels=8), tmp_path / "a.ckpt")
    second = save_module(SaliencyDetector(backbone=TINY, channels=8, predict_flip=True), tmp_path / "b.ckpt")
    return dm.predict_set, first, second, PseudoLabelStore(tmp_path / "store")


def _meta(dataset, ckpt: Path, store: PseudoLabelStore) -> dict:
    return {
        "ckpt": str(ckpt.resolve()),
        "ckpt_sha256": file_sha256(ckpt),
        "input": input_identity(dataset, store.root.parent),
        "postprocess": None,
    }


def test_a_round_being_written_by_another_model_is_refused_under_the_lock(setup, monkeypatch) -> None:
    dataset, first, second, store = setup
    # The first run has claimed the round and written two labels when the second starts; both passed the
    # early check (no round yet when they looked), which is what the lock must make safe.
    store.begin_round("r", _meta(dataset, first, store), same=RAW_KEYS)
    store.write("r", "synth_00000", dataset.load_raw(0)["image"][..., 0])
    store.write("r", "synth_00001", dataset.load_raw(1)["image"][..., 0])
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.round_dir("r").iterdir()}
    monkeypatch.setattr(usod.labels.rounds, "check_same_settings", lambda *args, **kwargs: None)
    with pytest.raises(FileExistsError, match="other settings"):
        write_label_round(dataset, second, store, "r", None, batch_size=2, num_workers=0, accelerator="cpu",
                          progress=False)  # fmt: skip
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.round_dir("r").iterdir()}
    assert after == before  # not one label of the second model
    assert store.round("r")["meta"]["ckpt_sha256"] == file_sha256(first)


def test_the_same_model_resumes_and_another_is_refused_up_front(setup) -> None:
    dataset, first, second, store = setup
    kwargs = {"batch_size": 2, "num_workers": 0, "accelerator": "cpu", "progress": False}
    store.begin_round("r", _meta(dataset, first, store), same=RAW_KEYS)  # a run killed after two labels
    store.write("r", "synth_00000", dataset.load_raw(0)["image"][..., 0])
    store.write("r", "synth_00001", dataset.load_raw(1)["image"][..., 0])
    result = write_label_round(dataset, first, store, "r", None, **kwargs)
    assert result.predicted == 4  # only the missing labels
    assert store.is_complete("r", [f.id for f in dataset.files])
    with pytest.raises(FileExistsError, match="ckpt_sha256"):
        write_label_round(dataset, second, store, "r", None, **kwargs)
    result = write_label_round(dataset, second, store, "r", None, overwrite=True, **kwargs)
    assert result.predicted == 6 and store.round("r")["meta"]["ckpt_sha256"] == file_sha256(second)
