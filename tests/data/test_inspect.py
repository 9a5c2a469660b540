"""``inspect_dataset`` and ``usod data inspect`` on clean and broken fake datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import layouts
from usod.commands import data_inspect
from usod.data.inspect import inspect_dataset


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    data_inspect.add_arguments(parser)
    return data_inspect.run(parser.parse_args(list(argv)))


def test_clean_rgbd(tmp_path: Path) -> None:
    layouts.write_rgbd(tmp_path)
    r = inspect_dataset("nju2k", tmp_path)
    assert r.ok and r.problems == []
    assert (r.n_samples, r.n_valid) == (3, 3)
    assert r.modalities == ["image", "depth", "mask"]
    assert r.image_sizes == {"24x32": 3}
    assert r.n_sequences is None


def test_video_counts_sequences_and_flow(tmp_path: Path) -> None:
    layouts.write_davis(tmp_path)
    r = inspect_dataset("davis", tmp_path)
    assert r.ok and r.n_samples == 7 and r.n_sequences == 2
    assert r.modalities == ["image", "flow", "mask"]


def test_no_masks_is_a_note_not_a_problem(tmp_path: Path) -> None:
    layouts.write_paired(tmp_path, "images", None)
    r = inspect_dataset("folder", tmp_path)
    assert r.ok and r.modalities == ["image"]
    assert any("no ground-truth masks" in n for n in r.notes)


def test_problems_are_all_reported(tmp_path: Path) -> None:
    ids = layouts.write_paired(tmp_path, "RGB", "GT", n=6, depth_dir="depth")
    truncated = tmp_path / "RGB" / f"{ids[0]}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:150])
    (tmp_path / "depth" / f"{ids[1]}.png").unlink()
    layouts.save(tmp_path / "GT" / f"{ids[2]}.png", np.zeros((10, 10), np.uint8))  # wrong size
    layouts.save(tmp_path / "GT" / f"{ids[3]}.png", (layouts.make_mask() > 0).astype(np.uint8))  # 0/1 mask
    rgb_mask = np.zeros((layouts.H, layouts.W, 3), np.uint8)
    rgb_mask[..., 0] = layouts.make_mask()
    layouts.save(tmp_path / "GT" / f"{ids[4]}.png", rgb_mask)
    (tmp_path / "GT" / f"{ids[5]}.png").write_bytes(b"junk")
    r = inspect_dataset("nju2k", tmp_path, progress=False)
    assert not r.ok
    assert r.n_samples == 6 and r.n_valid == 2
    text = "\n".join(r.problems)
    assert f"{ids[0]}.jpg: truncated" in text
    assert f"{ids[0]}.jpg: no depth" not in text and f"{ids[1]}.jpg: no depth file" in text
    assert f"{ids[2]}.png: mask is 10x10 but the image is 24x32" in text
    assert f"{ids[5]}.png: not a readable image" in text
    assert len(r.problems) == 4
    # storage quirks are fixed on read, reported, and are not problems
    assert r.fixed == {
        "mask stored as 0/1, rescaled to 0/255": 1,
        "colour mask reduced to one channel (max over channels)": 1,
    }
    assert "fixed on read: mask stored as 0/1" in r.summary()


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layouts.write_orssd(tmp_path / "rs")
    out = tmp_path / "reports" / "rs.json"
    assert (
        run_cli("--name", "orssd", "--root", str(tmp_path / "rs"), "--split", "test", "--json", str(out)) == 0
    )
    printed = capsys.readouterr().out
    assert "samples: 2" in printed and "no problems found" in printed
    data = json.loads(out.read_text())
    assert data["n_samples"] == 2 and data["split"] == "test" and data["problems"] == []

    (tmp_path / "rs" / "train-labels" / "img_000.png").unlink()
    assert run_cli("--name", "orssd", "--root", str(tmp_path / "rs")) == 1
    printed = capsys.readouterr().out
    assert "problems: 1" in printed and "img_000.jpg: no mask file" in printed

    assert run_cli("--name", "orssd", "--root", str(tmp_path / "nowhere")) == 2
    assert "not an existing folder" in capsys.readouterr().err
    assert run_cli("--name", "imagenet", "--root", str(tmp_path)) == 2
    assert "unknown dataset" in capsys.readouterr().err


def test_broken_symlinks_are_reported(tmp_path) -> None:
    from usod.data.inspect import inspect_dataset
    from usod.data.synth import write_dataset

    root = write_dataset(tmp_path / "d", "rgb", 3, size=(32, 32))
    (root / "images" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    report = inspect_dataset("folder", root)
    assert any("gone.jpg: broken symbolic link" in p for p in report.problems)
