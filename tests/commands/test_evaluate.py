"""``usod evaluate`` on generated folders: pairing, resizing, reports, JSON, plot, errors."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.metrics._reference import KEYS, blob_mask, make_prediction, pysod_scores
from usod import evaluation
from usod.commands import evaluate
from usod.data.io import InvalidInputError
from usod.metrics import SCORE_KEYS


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture()
def folders(tmp_path: Path) -> dict[str, object]:
    """GT with a flat and a video (``seq/frame``) part; predictions with a missing and an extra file."""
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "preds" / "methodA"
    stems = ["img_a", "img_b", "img_c", "seq1/00000", "seq1/00001", "seq2/00000"]
    pairs = {}
    for i, stem in enumerate(stems):
        h, w = 30 + 2 * i, 40 - i
        gt = blob_mask(rng, h, w)
        pred = make_prediction(rng, gt, ("blur", "noisy", "random")[i % 3])
        (gt_dir / stem).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(gt_dir / f"{stem}.png"), gt)
        if stem == "img_c":
            continue  # missing prediction
        (pred_dir / stem).parent.mkdir(parents=True, exist_ok=True)
        if stem == "img_b":  # smaller map: resized to the GT with INTER_LINEAR
            small = cv2.resize(pred, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(pred_dir / f"{stem}.png"), small)
            pred = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        elif stem == "seq1/00001":  # colour map: read as grayscale
            cv2.imwrite(str(pred_dir / f"{stem}.png"), np.dstack([pred, pred // 2, 255 - pred]))
            pred = cv2.imread(str(pred_dir / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        else:
            cv2.imwrite(str(pred_dir / f"{stem}.png"), pred)
        pairs[stem] = (pred, gt)
    cv2.imwrite(str(pred_dir / "extra_one.png"), np.zeros((5, 5), np.uint8))
    return {"gt": gt_dir, "pred": pred_dir, "pairs": pairs, "root": tmp_path}


def test_cli_scores_json_plot_and_report(folders: dict, capsys: pytest.CaptureFixture) -> None:
    root = folders["root"]
    args = _parse(
        [
            "--gt",
            str(folders["gt"]),
            "--pred",
            f"A={folders['pred']}",
            "--pred",
            str(folders["pred"]),  # no name: the folder name
            "--json",
            str(root / "out" / "scores.json"),
            "--plot",
            str(root / "out" / "curves.png"),
            "--no-progress",
        ]
    )
    assert evaluate.run(args) == 0
    captured = capsys.readouterr()
    assert "1 ground-truth files have no prediction" in captured.err and "img_c" in captured.err
    assert "1 predictions have no ground truth" in captured.err and "extra_one" in captured.err
    table = captured.out.splitlines()
    assert table[0].split()[:3] == ["method", "n", "mae"]
    assert [line.split()[0] for line in table[1:]] == ["A", "methodA"]

    scores = json.loads((root / "out" / "scores.json").read_text())
    assert list(scores) == ["A", "methodA"]
    assert tuple(scores["A"]) == SCORE_KEYS
    assert scores["A"] == scores["methodA"]
    assert scores["A"]["n"] == 5
    ref, _ = pysod_scores(list(folders["pairs"].values()))
    for key in KEYS:
        assert math.isclose(scores["A"][key], ref[key], abs_tol=1e-9), key

    plot = cv2.imread(str(root / "out" / "curves.png"))
    assert plot is not None and plot.shape[0] > 100


def test_evaluate_folders_and_method(folders: dict) -> None:
    out = evaluation.evaluate_folders(folders["gt"], {"m": folders["pred"]})
    res = evaluation.evaluate_method(folders["gt"], folders["pred"])
    assert res.name == "methodA"
    assert out["m"] == res.scores
    assert res.missing == ["img_c"]
    assert res.extra == ["extra_one"]
    assert set(res.curves) == {"precision", "recall", "f", "e"}
    assert all(len(curve) == 256 for curve in res.curves.values())
    assert max(res.curves["f"]) == pytest.approx(res.scores["max_f"], abs=1e-15)


def test_workers_give_identical_scores(folders: dict) -> None:
    serial = evaluation.evaluate_method(folders["gt"], folders["pred"], workers=0)
    parallel = evaluation.evaluate_method(folders["gt"], folders["pred"], workers=2)
    assert serial.scores == parallel.scores
    assert serial.curves == parallel.curves
    bad = folders["pred"] / "seq2" / "00000.png"
    bad.write_bytes(b"")
    with pytest.raises(InvalidInputError, match="empty"):
        evaluation.evaluate_folders(folders["gt"], {"m": folders["pred"]}, workers=2)


def test_strict_fails_on_missing(folders: dict) -> None:
    args = _parse(["--gt", str(folders["gt"]), "--pred", str(folders["pred"]), "--strict", "--no-progress"])
    assert evaluate.run(args) == 1


def test_corrupt_prediction_names_the_file(folders: dict, capsys: pytest.CaptureFixture) -> None:
    bad = folders["pred"] / "img_a.png"
    bad.write_bytes(b"not an image")
    args = _parse(["--gt", str(folders["gt"]), "--pred", str(folders["pred"]), "--no-progress"])
    assert evaluate.run(args) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a readable image" in err


def test_bad_folders_and_names(folders: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    args = _parse(["--gt", str(folders["gt"]), "--pred", f"x={empty}", "--no-progress"])
    assert evaluate.run(args) == 2
    assert "no prediction matches" in capsys.readouterr().err

    args = _parse(["--gt", str(tmp_path / "missing"), "--pred", str(folders["pred"]), "--no-progress"])
    assert evaluate.run(args) == 2
    assert "is not a folder" in capsys.readouterr().err

    args = _parse(["--gt", str(folders["gt"]), "--pred", f"a={folders['pred']}", "--pred", f"a={empty}"])
    assert evaluate.run(args) == 2
    assert "unique" in capsys.readouterr().err

    cv2.imwrite(str(folders["pred"] / "img_a.jpg"), np.zeros((4, 4), np.uint8))
    args = _parse(["--gt", str(folders["gt"]), "--pred", str(folders["pred"]), "--no-progress"])
    assert evaluate.run(args) == 2
    assert "same stem" in capsys.readouterr().err


def test_inputs_the_reference_conventions_misread_are_noted(tmp_path, capsys) -> None:
    import numpy as np
    from PIL import Image

    from usod.cli import main

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    for i in range(3):
        Image.fromarray(mask).save(gt / f"{i}.png")
    Image.fromarray(mask.astype(np.uint16)).save(pred / "0.png")  # 16-bit PNG holding 0..255
    Image.fromarray(np.dstack([mask] * 3 + [mask])).save(pred / "1.png")  # RGBA
    Image.fromarray(mask[:, :20]).save(pred / "2.png")  # half the width
    assert main(["evaluate", "--gt", str(gt), "--pred", f"M={pred}"]) == 0
    err = capsys.readouterr().err
    assert "M: note: 16-bit PNG predictions" in err and "0.png" in err
    assert "M: note: predictions with an alpha channel" in err
    assert "M: note: predictions with another aspect ratio than their mask, resized (e.g." in err
    assert "colour ground-truth" not in err
