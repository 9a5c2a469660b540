"""``usod label``: pseudo-label rounds from a checkpoint, resume, configs and errors (tiny generated data)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

from usod.cli import main
from usod.data.datamodules import get_datamodule
from usod.data.synth import write_dataset
from usod.labels import PseudoLabelStore
from usod.models.cue_extractor import CueExtractor

N, SIZE = 8, 64


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Synthetic RGB images and a CueExtractor trained one epoch on them: ``(data_root, ckpt)``."""
    tmp = tmp_path_factory.mktemp("label")
    data = write_dataset(tmp / "data", "rgb", N, size=(SIZE, SIZE))
    pl.seed_everything(0, verbose=False)
    dm = get_datamodule("folder", root=data, image_size=SIZE, batch_size=4, num_workers=0, augment=False)
    model = CueExtractor(backbone={"name": "resnet18", "weights": "none"}, feature_cache=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    ckpt = tmp / "stage1.ckpt"
    trainer.save_checkpoint(ckpt)
    return data, ckpt


def _label(ckpt: Path, data: Path, out: Path, *extra: str) -> int:
    args = ["label", "--ckpt", str(ckpt), "--dataset", "folder", "--root", str(data), "--out", str(out)]
    return main([*args, "--batch-size", "4", "--accelerator", "cpu", *extra])


def _pngs(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.png"))}


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_label_writes_raw_and_crf_rounds_then_resumes(trained, tmp_path, capsys) -> None:
    data, ckpt = trained
    out = tmp_path / "store"
    # Two workers: the CRF runs in a process pool, as on real data.
    assert _label(ckpt, data, out, "--workers", "2") == 0
    assert f"{N} predicted into 'stage1-raw', {N} post-processed into 'stage1'" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["current"] == "stage1"
    rounds = {r["name"]: r for r in manifest["rounds"]}
    assert rounds["stage1-raw"]["complete"] and rounds["stage1"]["complete"]
    assert rounds["stage1-raw"]["meta"]["ckpt"] == str(ckpt.resolve())
    assert rounds["stage1"]["meta"]["postprocess"]["median_ksize"] == 7
    raw, final = _pngs(out / "rounds" / "stage1-raw"), _pngs(out / "rounds" / "stage1")
    assert len(raw) == len(final) == N
    labels = {k: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for k, p in final.items()}
    assert all(label.shape == (SIZE, SIZE) for label in labels.values())
    assert set(np.unique(np.stack(list(labels.values())))) <= {0, 255}  # thresholded, A2S style

    # A finished run does nothing.
    assert _label(ckpt, data, out) == 0
    assert "0 predicted into 'stage1-raw', 0 post-processed" in capsys.readouterr().out

    # Lost labels of the complete round: only those are written again, identical to before.
    lost = sorted(final)[:3]
    kept = {k: _stamp(p) for k, p in final.items() if k not in lost}
    for key in lost:
        final[key].unlink()
    assert _label(ckpt, data, out) == 0
    assert "0 predicted into 'stage1-raw', 3 post-processed" in capsys.readouterr().out
    assert {k: _stamp(final[k]) for k in kept} == kept
    for key in lost:
        np.testing.assert_array_equal(cv2.imread(str(final[key]), cv2.IMREAD_GRAYSCALE), labels[key])
    assert PseudoLabelStore(out).current_round() == "stage1"


class Crash(RuntimeError):
    """A simulated crash (a KeyboardInterrupt inside Lightning ends in sys.exit)."""


def test_interrupted_prediction_and_crf_resume(trained, tmp_path, monkeypatch, capsys) -> None:
    import usod.ops.crf as crf
    from usod.labels.writer import PseudoLabelWriter

    data, ckpt = trained
    out = tmp_path / "store"

    # Interrupted after the first prediction batch (4 of 8 raw maps written).
    original_write = PseudoLabelWriter.write_on_batch_end

    def write_then_stop(self, trainer, *args, **kwargs):
        original_write(self, trainer, *args, **kwargs)
        raise Crash

    monkeypatch.setattr(PseudoLabelWriter, "write_on_batch_end", write_then_stop)
    with pytest.raises(Crash):
        _label(ckpt, data, out, "--round", "r1", "--workers", "0")
    monkeypatch.undo()
    raw = _pngs(out / "rounds" / "r1-raw")
    assert len(raw) == 4
    first = {k: _stamp(p) for k, p in raw.items()}

    # Interrupted in the CRF step after 3 labels.
    calls = {"n": 0}
    original_run = crf._run_one

    def run_then_stop(task):
        if calls["n"] == 3:
            raise Crash
        calls["n"] += 1
        return original_run(task)

    monkeypatch.setattr(crf, "_run_one", run_then_stop)
    with pytest.raises(Crash):
        _label(ckpt, data, out, "--round", "r1", "--workers", "0")
    monkeypatch.undo()
    capsys.readouterr()
    assert {k: _stamp(p) for k, p in _pngs(out / "rounds" / "r1-raw").items() if k in first} == first
    done = _pngs(out / "rounds" / "r1")
    assert len(done) == 3
    done_stamps = {k: _stamp(p) for k, p in done.items()}
    assert not {r["name"]: r for r in PseudoLabelStore(out).rounds()}["r1"]["complete"]

    assert _label(ckpt, data, out, "--round", "r1", "--workers", "0") == 0
    assert "0 predicted into 'r1-raw', 5 post-processed into 'r1'" in capsys.readouterr().out
    final = _pngs(out / "rounds" / "r1")
    assert len(final) == N and {k: _stamp(final[k]) for k in done_stamps} == done_stamps
    assert PseudoLabelStore(out).current_round() == "r1"


def test_config_yaml_and_no_crf(trained, tmp_path, capsys) -> None:
    data, ckpt = trained
    config = tmp_path / "data.yaml"
    init_args = {
        "dataset": "folder",
        "root": str(data),
        "image_size": SIZE,
        "batch_size": 4,
        "num_workers": 0,
    }
    config.write_text(
        yaml.safe_dump(
            {"data": {"class_path": "usod.data.datamodules.RGBDataModule", "init_args": init_args}}
        )
    )
    out = tmp_path / "store"
    args = ["label", "--ckpt", str(ckpt), "--config", str(config), "--out", str(out), "--accelerator", "cpu"]
    assert main([*args, "--no-crf", "--median", "1", "--round", "plain"]) == 0
    assert f"{N} predicted into 'plain-raw', {N} post-processed into 'plain'" in capsys.readouterr().out
    for key, path in _pngs(out / "rounds" / "plain").items():
        raw = cv2.imread(str(out / "rounds" / "plain-raw" / f"{key}.png"), cv2.IMREAD_GRAYSCALE)
        expected = np.where(raw.astype(np.float32) / 255.0 > 0.5, 255, 0)
        np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), expected)

    # The same round with other post-processing is refused rather than mixed.
    assert main([*args, "--no-crf", "--median", "3", "--round", "plain"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*args, "--no-crf", "--median", "3", "--round", "plain", "--overwrite"]) == 0
    assert (out / "retired").is_dir()

    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: 1\n")
    assert main(["label", "--ckpt", str(ckpt), "--config", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "data:" in err


def test_bad_checkpoint_and_missing_data_are_one_line_errors(trained, tmp_path, capsys) -> None:
    data, _ = trained
    out = tmp_path / "store"
    missing = tmp_path / "nope.ckpt"
    assert _label(missing, data, out) == 2
    err = capsys.readouterr().err
    assert f"{missing}: checkpoint not found" in err and "Traceback" not in err

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert _label(garbage, data, out) == 2
    err = capsys.readouterr().err
    assert str(garbage) in err and "not a readable checkpoint" in err

    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    assert _label(foreign, data, out) == 2
    assert "not written by a usod module" in capsys.readouterr().err
    assert not (out / "rounds" / "stage1").exists()

    _, ckpt = trained
    assert main(["label", "--ckpt", str(ckpt), "--out", str(out)]) == 2
    assert "--dataset NAME --root DIR" in capsys.readouterr().err


def test_pipeline_uses_the_same_label_round(trained, tmp_path) -> None:
    from usod.pipelines.a2s import LABEL_ROUND, RAW_ROUND, PipelineConfig, write_stage1_labels

    data, ckpt = trained
    config = PipelineConfig(
        out=tmp_path / "run",
        root=data,
        image_size=SIZE,
        batch_size=4,
        num_workers=0,
        postprocess_workers=0,
        accelerator="cpu",
    )
    store = PseudoLabelStore(write_stage1_labels(config, ckpt))
    assert store.current_round() == LABEL_ROUND
    assert len(store.finished_ids(RAW_ROUND)) == len(store.finished_ids(LABEL_ROUND)) == N
