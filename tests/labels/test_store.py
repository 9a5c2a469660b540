"""Tests for the on-disk pseudo-label store and the Lightning prediction writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from usod.labels import (
    ManifestError,
    PseudoLabelStore,
    PseudoLabelWriter,
    dataset_ids,
    exclude_ids,
    remaining,
)
from usod.ops import PostProcessConfig, postprocess


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


# ---------------------------------------------------------------------------------------------- store


def test_round_trip_with_video_ids_and_label_types(tmp_path: Path) -> None:
    store = PseudoLabelStore(tmp_path / "store")
    round_dir = store.begin_round("r1", {"producer": "test"})
    assert round_dir == tmp_path / "store" / "rounds" / "r1" and round_dir.is_dir()
    uint8 = np.arange(12, dtype=np.uint8).reshape(3, 4)
    floats = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    tensor = torch.tensor([[[0.0, 1.0, 1.0]]])  # 1xHxW
    boolean = np.array([[True, False]])
    store.write("r1", "a", uint8)
    store.write("r1", "seq/00001", floats)
    store.write("r1", "seq/00002", tensor)
    path = store.write("r1", "b", boolean)
    assert path == round_dir / "b.png"
    assert store.has("r1", "seq/00001") and not store.has("r1", "seq/00003")
    assert store.finished_ids("r1") == {"a", "b", "seq/00001", "seq/00002"}
    assert store.current_round() is None
    store.complete_round("r1", expected_ids=["a", "b", "seq/00001", "seq/00002"])
    assert store.current_round() == "r1"
    np.testing.assert_array_equal(store.read("a"), uint8)
    np.testing.assert_array_equal(store.read("seq/00001"), [[0, 128], [255, 64]])
    np.testing.assert_array_equal(store.read("seq/00002", "r1"), [[0, 255, 255]])
    np.testing.assert_array_equal(store.read("b"), [[255, 0]])
    (entry,) = store.rounds()
    assert entry["name"] == "r1" and entry["complete"] and entry["num_labels"] == 4
    assert entry["meta"] == {"producer": "test"} and entry["created"]
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["current"] == "r1"
    # A fresh store object sees the same state.
    assert PseudoLabelStore(tmp_path / "store").read("seq/00002").shape == (1, 3)


def test_rounds_are_never_lost(tmp_path: Path) -> None:
    store = PseudoLabelStore(tmp_path)
    store.begin_round("r1")
    store.write("r1", "x", np.full((4, 4), 10, np.uint8))
    store.complete_round("r1", ["x"])
    old = tmp_path / "rounds" / "r1" / "x.png"
    before = _stat(old)

    store.begin_round("r2", {"from": "r1"})
    store.write("r2", "x", np.full((4, 4), 20, np.uint8))
    assert store.current_round() == "r1"  # a round only becomes current once complete
    store.complete_round("r2", ["x"])
    assert [r["name"] for r in store.rounds()] == ["r1", "r2"]
    assert store.read("x")[0, 0] == 20 and store.read("x", "r1")[0, 0] == 10
    assert _stat(old) == before

    with pytest.raises(FileExistsError, match="'r1'.*already complete.*overwrite=True"):
        store.begin_round("r1")
    with pytest.raises(PermissionError, match="complete"):
        store.write("r1", "y", np.zeros((2, 2), np.uint8))

    # overwrite=True retires the old files instead of deleting them.
    store.begin_round("r1", overwrite=True)
    assert store.finished_ids("r1") == set()
    (retired,) = (tmp_path / "retired").iterdir()
    assert cv2.imread(str(retired / "x.png"), cv2.IMREAD_GRAYSCALE)[0, 0] == 10
    assert [r["name"] for r in store.rounds()] == ["r2", "r1"]
    assert store.current_round() == "r2"
    store.set_current("r2")
    with pytest.raises(ValueError, match="not a complete round"):
        store.set_current("r1")


def test_begin_round_resume_is_idempotent_and_restart_retires(tmp_path: Path) -> None:
    store = PseudoLabelStore(tmp_path)
    store.begin_round("r", {"v": 1})
    store.write("r", "a", np.zeros((2, 2), np.uint8))
    stat = _stat(tmp_path / "rounds" / "r" / "a.png")
    store.begin_round("r", {"v": 1})  # resume: keep partial labels
    assert store.finished_ids("r") == {"a"} and _stat(tmp_path / "rounds" / "r" / "a.png") == stat
    assert len(store.rounds()) == 1
    store.begin_round("r", resume=False)
    assert store.finished_ids("r") == set()
    assert any((d / "a.png").is_file() for d in (tmp_path / "retired").iterdir())


def test_complete_round_names_missing_labels(tmp_path: Path) -> None:
    store = PseudoLabelStore(tmp_path)
    store.begin_round("r")
    store.write("r", "a", np.zeros((2, 2), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"missing 1 of 2 labels.*rounds/r/seq/b\.png"):
        store.complete_round("r", ["a", "seq/b"])
    assert store.current_round() is None and not store.rounds()[0]["complete"]
    with pytest.raises(FileNotFoundError, match="never begun"):
        store.complete_round("other")


def test_read_missing_names_expected_file(tmp_path: Path) -> None:
    store = PseudoLabelStore(tmp_path)
    with pytest.raises(FileNotFoundError, match="no completed round"):
        store.read("a")
    store.begin_round("r")
    store.write("r", "a", np.zeros((2, 2), np.uint8))
    store.complete_round("r")
    with pytest.raises(FileNotFoundError, match=r"expected file .*rounds/r/seq/zz\.png"):
        store.read("seq/zz")
    (tmp_path / "rounds" / "r" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"could not decode .*bad\.png"):
        store.read("bad")


def test_corrupt_manifest_gives_clear_error_and_keeps_pngs(tmp_path: Path) -> None:
    store = PseudoLabelStore(tmp_path)
    store.begin_round("r")
    png = store.write("r", "a", np.full((3, 3), 7, np.uint8))
    store.complete_round("r")
    data = png.read_bytes()
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"rounds": [')
    for call in (store.current_round, store.rounds, lambda: store.begin_round("r2")):
        with pytest.raises(ManifestError, match=r"corrupt pseudo-label manifest .*manifest\.json"):
            call()
    manifest.write_text('{"rounds": 3}')
    with pytest.raises(ManifestError, match="'rounds' list"):
        store.current_round()
    assert png.read_bytes() == data


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = PseudoLabelStore(tmp_path)
    store.begin_round("r")
    store.write("r", "keep", np.full((5, 5), 3, np.uint8))

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        store.write("r", "seq/new", np.zeros((5, 5), np.uint8))
    with pytest.raises(OSError, match="simulated"):
        store.write("r", "keep", np.zeros((5, 5), np.uint8))
    monkeypatch.undo()
    files = sorted(
        p.relative_to(tmp_path / "rounds" / "r").as_posix() for p in (tmp_path / "rounds" / "r").rglob("*")
    )
    assert files == ["keep.png", "seq"]  # no final file for "seq/new", no temp leftovers
    assert store.finished_ids("r") == {"keep"}
    assert store.read("keep", "r")[0, 0] == 3  # the old label survived the failed rewrite


def test_only_rank_zero_writes_the_manifest(tmp_path: Path) -> None:
    worker = PseudoLabelStore(tmp_path, rank=1)
    worker.begin_round("r")
    worker.write("r", "b", np.zeros((2, 2), np.uint8))
    assert not (tmp_path / "manifest.json").exists()
    lead = PseudoLabelStore(tmp_path, rank=0)
    lead.begin_round("r")
    lead.write("r", "a", np.zeros((2, 2), np.uint8))
    worker.complete_round("r", ["a", "b"])
    assert lead.current_round() is None
    lead.complete_round("r", ["a", "b"])
    assert worker.current_round() == "r" and lead.rounds()[0]["num_labels"] == 2


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.begin_round("../up"), "invalid round name"),
        (lambda s: s.begin_round("r", {"bad": object()}), "JSON serialisable"),
        (lambda s: s.write("r", "../escape", np.zeros((2, 2), np.uint8)), "invalid sample id"),
        (lambda s: s.write("r", "/abs", np.zeros((2, 2), np.uint8)), "invalid sample id"),
        (lambda s: s.write("r", "", np.zeros((2, 2), np.uint8)), "non-empty"),
        (lambda s: s.write("r", "a", np.zeros((2, 2, 3), np.uint8)), r"'a'.*HxW.*\(2, 2, 3\)"),
        (lambda s: s.write("r", "a", np.full((2, 2), 1.5)), r"\[0, 1\]"),
        (lambda s: s.write("r", "a", np.zeros((2, 2), np.int32)), "unsupported label dtype"),
        (lambda s: s.write("never", "a", np.zeros((2, 2), np.uint8)), "has not been begun"),
    ],
)
def test_bad_input_errors(tmp_path: Path, call, match: str) -> None:
    store = PseudoLabelStore(tmp_path)
    store.begin_round("r")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        call(store)


# ---------------------------------------------------------------------------------------------- writer


class TinySaliencyDataset(Dataset):
    """Post-transform samples of varying original size; images are also written to disk."""

    def __init__(self, root: Path, n: int = 10) -> None:
        rng = np.random.default_rng(0)
        self.ids = [f"seq{i % 2}/{i:05d}" for i in range(n)]
        self.sizes = [(20 + i, 30 + 2 * i) for i in range(n)]
        self.paths = []
        for sample_id, (h, w) in zip(self.ids, self.sizes, strict=True):
            path = root / "images" / f"{sample_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            self.paths.append(str(path))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        bgr = cv2.imread(self.paths[index])
        image = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (16, 16))
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).float() / 255.0,
            "id": self.ids[index],
            "size": torch.tensor(self.sizes[index]),
            "image_path": self.paths[index],
        }


class TinySaliencyModule(pl.LightningModule):
    def __init__(self, fail_at_batch: int | None = None, with_meta: bool = True) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.fail_at_batch = fail_at_batch
        self.with_meta = with_meta

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        if batch_idx == self.fail_at_batch:
            raise RuntimeError("simulated crash")
        saliency = (batch["image"].mean(1, keepdim=True) * self.scale).clamp(0, 1)
        out = {"saliency": saliency}
        if self.with_meta:
            out.update(id=batch["id"], size=batch["size"], image_path=batch["image_path"])
        return out


class CountingStore(PseudoLabelStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes: list[str] = []

    def write(self, round_name: str, sample_id: str, label) -> Path:
        self.writes.append(sample_id)
        return super().write(round_name, sample_id, label)


def _trainer(writer: PseudoLabelWriter) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[writer],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def test_writer_writes_every_sample_at_original_size(tmp_path: Path) -> None:
    data = TinySaliencyDataset(tmp_path)
    store = PseudoLabelStore(tmp_path / "store")
    writer = PseudoLabelWriter(store, "r1", meta={"producer": "tiny"})
    _trainer(writer).predict(TinySaliencyModule(), DataLoader(data, batch_size=3), return_predictions=False)
    assert store.current_round() == "r1" and store.rounds()[0]["num_labels"] == len(data)
    for sample_id, size in zip(data.ids, data.sizes, strict=True):
        label = store.read(sample_id)
        assert label.shape == size and label.dtype == np.uint8
    # The label is the bilinear upsampling of the 16x16 map, so it follows the image's mean intensity.
    sample = data[0]
    expected = sample["image"].mean(0).numpy()
    small = cv2.resize(store.read(data.ids[0]), (16, 16), interpolation=cv2.INTER_AREA) / 255.0
    assert np.corrcoef(small.ravel(), expected.ravel())[0, 1] > 0.8


def test_writer_postprocess_and_epoch_interval(tmp_path: Path) -> None:
    data = TinySaliencyDataset(tmp_path, n=4)
    store = PseudoLabelStore(tmp_path / "store")
    seen: list[tuple[tuple[int, ...], str]] = []
    config = PostProcessConfig(median_ksize=3)

    def post(image: np.ndarray | None, prob: np.ndarray) -> np.ndarray:
        assert image is not None
        seen.append((image.shape, str(image.dtype)))
        return postprocess(image, prob, config)

    writer = PseudoLabelWriter(store, "crf", postprocess=post, write_interval="epoch")
    _trainer(writer).predict(TinySaliencyModule(), DataLoader(data, batch_size=2))
    assert seen == [((*size, 3), "uint8") for size in data.sizes]
    for sample_id in data.ids:
        assert set(np.unique(store.read(sample_id))) <= {0, 255}


def test_writer_takes_id_and_size_from_batch(tmp_path: Path) -> None:
    data = TinySaliencyDataset(tmp_path, n=3)
    store = PseudoLabelStore(tmp_path / "store")
    writer = PseudoLabelWriter(store, "r")
    _trainer(writer).predict(TinySaliencyModule(with_meta=False), DataLoader(data, batch_size=2))
    assert store.finished_ids("r") == set(data.ids)


def test_writer_resume_writes_each_id_once_and_leaves_old_files(tmp_path: Path) -> None:
    data = TinySaliencyDataset(tmp_path, n=10)
    store = CountingStore(tmp_path / "store")
    # An older, complete round that must stay untouched.
    store.begin_round("r0")
    for sample_id in data.ids:
        store.write("r0", sample_id, np.zeros((2, 2), np.uint8))
    store.complete_round("r0", data.ids)
    old_round = {p: _stat(p) for p in (tmp_path / "store" / "rounds" / "r0").rglob("*.png")}
    store.writes.clear()

    writer = PseudoLabelWriter(store, "r1")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(writer).predict(TinySaliencyModule(fail_at_batch=2), DataLoader(data, batch_size=2))
    first = list(store.writes)
    assert first == data.ids[:4]
    assert store.finished_ids("r1") == set(first)
    assert store.current_round() == "r0" and not store.rounds()[1]["complete"]
    stats = {i: _stat(store.label_path("r1", i)) for i in first}

    rest = remaining(data, store, "r1")
    assert rest.ids == data.ids[4:] and rest.all_ids == data.ids and dataset_ids(rest) == data.ids[4:]
    store.writes.clear()
    writer = PseudoLabelWriter(store, "r1")
    _trainer(writer).predict(TinySaliencyModule(), DataLoader(rest, batch_size=2))
    assert store.writes == data.ids[4:]
    assert sorted(first + store.writes) == sorted(data.ids)  # each id written exactly once overall
    assert {i: _stat(store.label_path("r1", i)) for i in first} == stats
    assert {p: _stat(p) for p in old_round} == old_round
    assert store.current_round() == "r1" and store.rounds()[1]["num_labels"] == len(data)


def test_writer_refuses_to_complete_when_samples_are_missing(tmp_path: Path) -> None:
    data = TinySaliencyDataset(tmp_path, n=4)
    store = PseudoLabelStore(tmp_path / "store")
    writer = PseudoLabelWriter(store, "r", expected_ids=[*data.ids, "seq9/missing"])
    with pytest.raises(FileNotFoundError, match="missing 1 of 5"):
        _trainer(writer).predict(TinySaliencyModule(), DataLoader(data, batch_size=4))
    assert store.current_round() is None


def test_bad_prediction_output_is_reported(tmp_path: Path) -> None:
    writer = PseudoLabelWriter(PseudoLabelStore(tmp_path), "r")
    writer.store.begin_round("r")
    with pytest.raises(ValueError, match="'saliency'"):
        writer.write_prediction({"id": ["a"]})
    with pytest.raises(ValueError, match=r"Bx1xhxw.*\(1, 3, 4, 4\)"):
        writer.write_prediction(
            {"saliency": torch.zeros(1, 3, 4, 4), "id": ["a"], "size": torch.tensor([[4, 4]])}
        )
    with pytest.raises(ValueError, match="batch mismatch"):
        writer.write_prediction(
            {"saliency": torch.zeros(2, 1, 4, 4), "id": ["a"], "size": torch.tensor([[4, 4]])}
        )
    with pytest.raises(ValueError, match="write_interval"):
        PseudoLabelWriter(tmp_path, "r", write_interval="step")


def test_exclude_ids_and_dataset_ids_fallback(tmp_path: Path) -> None:
    class NoIds(Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> dict:
            return {"id": f"s{i}"}

    assert dataset_ids(NoIds()) == ["s0", "s1", "s2"]
    subset = exclude_ids(NoIds(), {"s1"})
    assert subset.ids == ["s0", "s2"] and [subset[i]["id"] for i in range(len(subset))] == ["s0", "s2"]


def _ddp_store_worker(rank: int, root: str, init_file: str, ids: list[str]) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        store = PseudoLabelStore(root)  # rank comes from torch.distributed
        store.begin_round("r", {"world": 2})
        for sample_id in ids[rank::2]:
            store.write("r", sample_id, np.full((3, 3), rank, np.uint8))
        store.complete_round("r", ids)
        assert store.current_round() == "r"  # every rank sees the finished manifest after the barrier
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_write_disjoint_ids_and_one_manifest(tmp_path: Path) -> None:
    ids = [f"v/{i}" for i in range(7)]
    # "fork" skips re-importing torch and Lightning in the children (this test only needs gloo on CPU).
    torch.multiprocessing.start_processes(
        _ddp_store_worker,
        args=(str(tmp_path / "store"), str(tmp_path / "init"), ids),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    store = PseudoLabelStore(tmp_path / "store")
    assert store.current_round() == "r" and store.rounds()[0]["num_labels"] == 7
    assert [int(store.read(i)[0, 0]) for i in ids] == [0, 1, 0, 1, 0, 1, 0]


class WriteLogStore(PseudoLabelStore):
    """Logs every written id to a file shared by all ranks (small O_APPEND writes do not interleave)."""

    def __init__(self, root: Path, log: Path) -> None:
        super().__init__(root)
        self.log = log

    def write(self, round_name: str, sample_id: str, label) -> Path:
        with open(self.log, "a") as handle:
            handle.write(f"{sample_id}\n")
        return super().write(round_name, sample_id, label)


def test_lightning_ddp_predicts_each_sample_once(tmp_path: Path) -> None:
    data = TinySaliencyDataset(tmp_path, n=7)
    store = WriteLogStore(tmp_path / "store", tmp_path / "writes.log")
    writer = PseudoLabelWriter(store, "r")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        callbacks=[writer],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.predict(TinySaliencyModule(), DataLoader(data, batch_size=2), return_predictions=False)
    assert store.current_round() == "r"
    assert store.finished_ids("r") == set(data.ids)
    assert sorted((tmp_path / "writes.log").read_text().split()) == sorted(data.ids)  # 7 ids, none twice


def test_concurrent_writers_do_not_lose_manifest_updates(tmp_path) -> None:
    """Two labelling jobs writing rounds into one store at once (e.g. two `usod label` runs)."""
    from concurrent.futures import ThreadPoolExecutor

    def label_rounds(prefix: str) -> None:
        store = PseudoLabelStore(tmp_path / "store")  # each job its own store object, as separate processes
        for k in range(15):
            name = f"{prefix}{k}"
            store.begin_round(name, {"job": prefix})
            store.write(name, "a", np.full((4, 4), 200, np.uint8))
            store.complete_round(name, ["a"])

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(label_rounds, ["x", "y"]))
    rounds = PseudoLabelStore(tmp_path / "store").rounds()
    assert sorted(r["name"] for r in rounds) == sorted(f"{p}{k}" for p in "xy" for k in range(15))
    assert all(r["complete"] for r in rounds)


def test_a_file_where_the_store_goes_is_a_clear_error(tmp_path) -> None:
    from usod.data.io import InvalidInputError

    (tmp_path / "afile").write_text("x")
    for root in (tmp_path / "afile", tmp_path / "afile" / "labels"):
        with pytest.raises(InvalidInputError, match="is a file, not a folder") as exc:
            PseudoLabelStore(root)
        assert exc.value.path == tmp_path / "afile"


def test_reopening_a_round_removes_stale_half_written_files(tmp_path) -> None:
    import time

    store = PseudoLabelStore(tmp_path / "store")
    folder = store.begin_round("r")
    stale, fresh = folder / ".tmp-abc.png.part", folder / ".tmp-def.png.part"
    for part in (stale, fresh):
        part.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))  # left by a writer killed an hour ago
    store.begin_round("r")  # resume
    assert not stale.exists() and fresh.exists()  # a running writer's file is left alone


def test_writer_postprocess_reads_the_original_images_of_a_usod_dataset(tmp_path) -> None:
    """`PseudoLabelWriter(postprocess=usod.ops.postprocess)` with predictions that carry no image."""
    import usod.ops
    from usod.data.datamodules import get_datamodule
    from usod.data.synth import write_dataset
    from usod.labels import PseudoLabelWriter
    from usod.models.cue_extractor import CueExtractor

    root = write_dataset(tmp_path / "d", "rgb", 3, size=(40, 48))
    dm = get_datamodule("folder", root=root, image_size=32, num_workers=0, batch_size=2, augment=False)
    store = PseudoLabelStore(tmp_path / "store")
    seen: list[tuple[int, ...]] = []

    def post(image, prob):
        seen.append(image.shape)
        return usod.ops.postprocess(image, prob)

    writer = PseudoLabelWriter(store, "stage1", postprocess=post)
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False)
    trainer.predict(CueExtractor(backbone={"name": "resnet18", "weights": "none"}), datamodule=dm)
    assert seen == [(40, 48, 3)] * 3  # each sample's own image, at its original size
    assert store.finished_ids("stage1") == {p.stem for p in (root / "images").iterdir()}


def test_an_unknown_round_is_named_as_such(tmp_path) -> None:
    store = PseudoLabelStore(tmp_path / "store")
    store.begin_round("r1")
    with pytest.raises(FileNotFoundError, match=r"has no round 'nope' \(rounds: \['r1'\]\)"):
        store.read("a", "nope")
