"""On-disk pseudo-label store: one 8-bit PNG per sample per round, plus a JSON manifest.

Store layout::

    <root>/
      manifest.json                  # rounds in order and the current round (written by rank 0 only)
      rounds/<round_name>/<id>.png   # 8-bit grayscale, original image size; ``id`` may contain "/"
      retired/<round_name>-<stamp>/  # rounds replaced (``overwrite=True``) or restarted (``resume=False``)

Every PNG and the manifest are written atomically (temporary file in the same directory, then
``os.replace``), so a crash never leaves a truncated file behind: a label either exists whole or not at all.
That is what makes a labelling round resumable: :meth:`PseudoLabelStore.finished_ids` lists what is done.

Under DDP every rank writes its own, disjoint, sample ids; the files are the only shared state. Only rank 0
writes the manifest. The rank is taken from the ``rank`` argument, else from ``torch.distributed`` when it is
initialised, else from the launcher's environment (see :mod:`usod.distributed`).
:meth:`PseudoLabelStore.begin_round` and :meth:`PseudoLabelStore.complete_round` call
``torch.distributed.barrier()`` when a process group with more than one rank is initialised, so under DDP
every rank must call them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from usod.data.io import (
    TMP_PREFIX,
    InvalidInputError,
    atomic_write_bytes,
    imread_cv2,
    sample_id_problem,
    write_png_atomic,
)
from usod.distributed import barrier, is_rank_zero, rank_world

_RANK_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK")
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_ROUND_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ManifestError(RuntimeError):
    """The store's manifest cannot be read or has an unexpected structure."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def to_uint8_label(label: np.ndarray | Any, *, name: str = "label") -> np.ndarray:
    """Converts a label map to a HxW uint8 array.

    Accepted inputs: uint8 (kept as is), bool (0/255), or floating point in [0, 1] (scaled by 255 and
    rounded), as a numpy array or a torch tensor with shape HxW, 1xHxW or 1x1xHxW.

    Args:
        label: The label map.
        name: How to refer to the label in error messages (e.g. the sample id).

    Returns:
        A contiguous HxW uint8 array.

    Raises:
        ValueError: On a bad shape, an unsupported dtype or float values outside [0, 1].
    """
    if hasattr(label, "detach"):  # torch.Tensor, without importing torch here
        label = label.detach().cpu()
        if label.is_floating_point():  # numpy has no bfloat16
            label = label.float()
        label = label.numpy()
    array = np.asarray(label)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a HxW label map (or 1xHxW), got shape {tuple(np.shape(label))}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: empty label map of shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return np.ascontiguousarray(array.astype(np.uint8) * 255)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name}: label map contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(f"{name}: float label map must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
        return np.ascontiguousarray(np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8))
    raise ValueError(f"{name}: unsupported label dtype {array.dtype}; use uint8, bool or float in [0, 1]")


def write_label_png(path: str | Path, label: np.ndarray | Any) -> Path:
    """Encodes ``label`` (see :func:`to_uint8_label`) as an 8-bit grayscale PNG and writes it atomically."""
    return write_png_atomic(path, to_uint8_label(label, name=str(path)))


def read_png_gray(path: str | Path) -> np.ndarray:
    """Reads an 8-bit grayscale PNG as a HxW uint8 array, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo label not found: expected file {path}")
    image = imread_cv2(path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"could not decode pseudo label {path} (not a readable image)")
    return image


def validate_sample_id(sample_id: str) -> str:
    """Checks that a sample id is a safe relative path (see :func:`usod.data.io.sample_id_problem`)."""
    problem = sample_id_problem(sample_id)
    if problem is not None:
        raise ValueError(problem)
    return sample_id


def _remove_stale_parts(folder: Path, age_s: float = 600.0) -> None:
    """Delete half-written ``.tmp-*.part`` files older than ``age_s`` left under ``folder`` by killed writers.

    They are never read (labels appear only through ``os.replace``); the age keeps the files of a writer that
    is still running.
    """
    import time

    cutoff = time.time() - age_s
    for part in folder.rglob(f"{TMP_PREFIX}*.part"):
        with contextlib.suppress(OSError):
            if part.stat().st_mtime < cutoff:
                part.unlink()


def check_round_settings(
    root: Path, name: str, entry: dict[str, Any] | None, meta: dict[str, Any], keys: Sequence[str]
) -> None:
    """Refuse a round whose recorded ``meta`` differs from ``meta`` in ``keys``: its labels would mix two
    producers (e.g. two checkpoints).

    Raises:
        FileExistsError: Naming the round, the store and each differing setting.
    """
    old = (entry or {}).get("meta") or {}
    differ = [k for k in keys if k in old and k in meta and old[k] != meta[k]]
    if differ:
        details = "; ".join(f"{k}: {old[k]!r} in the store, {meta[k]!r} now" for k in differ)
        raise FileExistsError(
            f"pseudo-label round {name!r} in {root} was written with other settings ({details}); choose "
            "another round name or overwrite it"
        )


def _validate_round_name(name: str) -> str:
    if not isinstance(name, str) or not _ROUND_NAME.match(name):
        raise ValueError(
            f"invalid round name {name!r}: use letters, digits, '.', '_' or '-', starting with a letter/digit"
        )
    return name


class PseudoLabelStore:
    """Pseudo labels on disk, organised in rounds (see the module docstring for the layout).

    Rounds are never lost: beginning a round that already exists and is complete raises unless
    ``overwrite=True``, and even then the old files are moved to ``<root>/retired/`` rather than deleted.

    Args:
        root: Store directory (created when missing).
        rank: This process's global rank; ``None`` reads it from ``torch.distributed`` or ``RANK``.

    Examples:
        >>> store = PseudoLabelStore(tmp_dir)  # doctest: +SKIP
        >>> store.begin_round("stage1", {"producer": "a2s"})
        >>> store.write("stage1", "seq/00001", prob_map)
        >>> store.complete_round("stage1", expected_ids=dataset.ids)
        >>> store.read("seq/00001")  # from the current round
    """

    def __init__(self, root: str | Path, *, rank: int | None = None) -> None:
        self.root = Path(root)
        self._rank = rank
        self._known_complete: set[str] = set()
        blocker = next((p for p in (self.root, *self.root.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise InvalidInputError(blocker, "is a file, not a folder (where the pseudo-label store goes)")
        self.root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ paths and rank
    @property
    def manifest_path(self) -> Path:
        """Path of ``manifest.json``."""
        return self.root / MANIFEST_NAME

    @property
    def rank(self) -> int:
        """Global rank of this process (resolved lazily, so a store built before DDP starts is fine)."""
        if self._rank is not None:
            return self._rank
        if is_rank_zero():
            return 0
        rank, world = rank_world()
        if world > 1:
            return rank
        return next((int(os.environ[k]) for k in _RANK_VARS if os.environ.get(k, "").isdigit()), 1)

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the manifest: global rank 0 (also before the process group exists,
        see :func:`usod.distributed.is_rank_zero`)."""
        return self._rank == 0 if self._rank is not None else is_rank_zero()

    def _round_path(self, name: str) -> Path:
        return self.root / "rounds" / _validate_round_name(name)

    def label_path(self, round_name: str, sample_id: str) -> Path:
        """Path of the PNG that holds ``sample_id`` in ``round_name`` (it may not exist yet)."""
        return self._round_path(round_name) / (validate_sample_id(sample_id) + ".png")

    # ------------------------------------------------------------------ manifest
    def _empty_manifest(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, "current": None, "rounds": [], "retired": []}

    def _load_manifest(self) -> dict[str, Any]:
        path = self.manifest_path
        if not path.exists():
            return self._empty_manifest()
        hint = (
            f"the label PNGs under {self.root / 'rounds'} were not touched; restore the manifest from a "
            "backup, or delete it and re-register the rounds"
        )
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ManifestError(f"corrupt pseudo-label manifest {path}: {err}; {hint}") from err
        if (
            not isinstance(manifest, dict)
            or not isinstance(manifest.get("rounds"), list)
            or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in manifest["rounds"])
            or not (manifest.get("current") is None or isinstance(manifest.get("current"), str))
        ):
            raise ManifestError(
                f"corrupt pseudo-label manifest {path}: expected an object with a 'rounds' list of "
                f"objects with a 'name' and a 'current' string or null; {hint}"
            )
        if manifest.get("version", MANIFEST_VERSION) > MANIFEST_VERSION:
            raise ManifestError(
                f"pseudo-label manifest {path} has version {manifest['version']}, newer than this "
                f"usod supports ({MANIFEST_VERSION})"
            )
        manifest.setdefault("retired", [])
        for entry in manifest["rounds"]:
            if entry.get("complete"):
                self._known_complete.add(entry["name"])
        return manifest

    @contextlib.contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        """Exclusive ``flock`` of ``.manifest.lock``: two processes writing rounds into one store (e.g. two
        ``usod label`` runs) cannot lose each other's manifest updates. No-op where ``fcntl`` is missing."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".manifest.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        if not self.is_writer:
            return
        data = json.dumps(manifest, indent=2, sort_keys=False).encode("utf-8") + b"\n"
        atomic_write_bytes(self.manifest_path, data)

    @staticmethod
    def _entry(manifest: dict[str, Any], name: str) -> dict[str, Any] | None:
        for entry in manifest["rounds"]:
            if entry["name"] == name:
                return entry
        return None

    def _retire(self, manifest: dict[str, Any], name: str, reason: str) -> None:
        """Moves a round's files to ``retired/`` and drops it from the round list (rank 0 only)."""
        src = self._round_path(name)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        dst = self.root / "retired" / f"{name}-{stamp}"
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
        old = self._entry(manifest, name)
        manifest["rounds"] = [e for e in manifest["rounds"] if e["name"] != name]
        manifest["retired"].append(
            {
                "name": name,
                "moved_to": str(dst.relative_to(self.root)),
                "reason": reason,
                "retired": _now(),
                "entry": old,
            }
        )
        if manifest.get("current") == name:
            manifest["current"] = None
        self._known_complete.discard(name)

    # ------------------------------------------------------------------ rounds
    def begin_round(
        self,
        name: str,
        meta: dict[str, Any] | None = None,
        *,
        resume: bool = True,
        overwrite: bool = False,
        same: Sequence[str] = (),
    ) -> Path:
        """Creates (or reopens) a round and returns its directory. Idempotent for unfinished rounds.

        Args:
            name: Round name (letters, digits, ``.``, ``_``, ``-``).
            meta: Producer / settings recorded in the manifest (must be JSON serialisable).
            resume: When the round exists but is incomplete, keep its labels (the default) so that only
                the missing samples need predicting. ``False`` retires the partial labels and starts empty.
            overwrite: Allow restarting a round that is already complete; its files are retired, not deleted.
            same: Keys of ``meta`` that an existing round must have recorded with the same values (e.g. the
                checkpoint's hash), checked and claimed under the manifest lock: of two processes writing one
                round with different models, the second is refused instead of mixing its labels in.
                Ignored with ``overwrite``.

        Returns:
            The round directory.

        Raises:
            FileExistsError: The round is complete and ``overwrite`` is False, or it was written with other
                ``same`` settings.
            ManifestError: The manifest is corrupt.
        """
        _validate_round_name(name)
        if meta is not None:
            try:
                json.dumps(meta)
            except TypeError as err:
                raise ValueError(f"round {name!r}: meta must be JSON serialisable ({err})") from err
        with self._manifest_lock():  # one read-modify-write at a time, also across processes
            manifest = self._load_manifest()
            entry = self._entry(manifest, name)
            if same and not overwrite:
                check_round_settings(self.root, name, entry, meta or {}, same)
            if entry is not None and entry.get("complete") and not overwrite:
                raise FileExistsError(
                    f"pseudo-label round {name!r} in {self.root} is already complete; pass overwrite=True to "
                    "start it again (the old labels are moved to retired/), or choose a new round name"
                )
            path = self._round_path(name)
            if self.is_writer:
                if entry is not None and entry.get("complete"):
                    self._retire(manifest, name, "overwrite")
                    entry = None
                elif not resume and (entry is not None or path.exists()):
                    self._retire(manifest, name, "restart without resume")
                    entry = None
                path.mkdir(parents=True, exist_ok=True)
                if entry is None:
                    manifest["rounds"].append(
                        {
                            "name": name,
                            "created": _now(),
                            "meta": dict(meta or {}),
                            "num_labels": 0,
                            "complete": False,
                            "completed": None,
                        }
                    )
                elif meta is not None and entry.get("meta") != meta:
                    entry.setdefault("meta_history", []).append(entry.get("meta"))
                    entry["meta"] = dict(meta)
                self._save_manifest(manifest)
                _remove_stale_parts(path)
        # Other ranks wait for rank 0 to retire old files before writing into the directory.
        barrier()
        path.mkdir(parents=True, exist_ok=True)
        self._known_complete.discard(name)
        return path

    def write(self, round_name: str, sample_id: str, label: np.ndarray | Any) -> Path:
        """Writes one label atomically as ``rounds/<round_name>/<sample_id>.png``.

        Args:
            round_name: A round begun with :meth:`begin_round` and not complete.
            sample_id: Sample id (may contain ``/``; subdirectories are created).
            label: HxW uint8, bool, or float in [0, 1] (numpy or torch, 1xHxW accepted), at original size.

        Returns:
            The written path.
        """
        path = self.label_path(round_name, sample_id)
        round_path = self._round_path(round_name)
        if not round_path.is_dir():
            raise FileNotFoundError(
                f"pseudo-label round {round_name!r} has not been begun in {self.root} "
                f"(missing directory {round_path}); call begin_round first"
            )
        if round_name in self._known_complete:
            raise PermissionError(
                f"pseudo-label round {round_name!r} is complete; labels can no longer change"
            )
        array = to_uint8_label(label, name=f"sample {sample_id!r}")
        return write_label_png(path, array)

    def has(self, round_name: str, sample_id: str) -> bool:
        """Whether ``sample_id`` has a label in ``round_name``."""
        return self.label_path(round_name, sample_id).is_file()

    def finished_ids(self, round_name: str) -> set[str]:
        """Ids that already have a label in ``round_name`` (skip these when resuming)."""
        base = self._round_path(round_name)
        if not base.is_dir():
            return set()
        found: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]
            rel = Path(dirpath).relative_to(base)
            for fname in filenames:
                if fname.endswith(".png") and not fname.startswith(TMP_PREFIX):
                    found.add((rel / fname[: -len(".png")]).as_posix())
        return found

    def complete_round(self, round_name: str, expected_ids: Iterable[str] | None = None) -> None:
        """Checks a round, marks it complete and makes it the current round.

        Under DDP every rank must call this after writing its share; ranks synchronise first so that all
        labels are on disk, and every rank raises the same error when labels are missing.

        Args:
            round_name: The round to finish.
            expected_ids: Ids that must all have a label; ``None`` only requires at least one label.

        Raises:
            FileNotFoundError: Some expected labels are missing (the first few are named).
            ManifestError: The manifest is corrupt.
        """
        barrier()
        base = self._round_path(round_name)
        if not base.is_dir():
            raise FileNotFoundError(f"pseudo-label round {round_name!r} was never begun in {self.root}")
        done = self.finished_ids(round_name)
        if expected_ids is not None:
            expected = {validate_sample_id(i) for i in expected_ids}
            missing = sorted(expected - done)
            if missing:
                shown = ", ".join(str(self.label_path(round_name, i)) for i in missing[:5])
                raise FileNotFoundError(
                    f"pseudo-label round {round_name!r} is missing {len(missing)} of {len(expected)} labels, "
                    f"e.g. {shown}"
                )
        elif not done:
            raise FileNotFoundError(f"pseudo-label round {round_name!r} has no labels in {base}")
        if self.is_writer:
            with self._manifest_lock():
                manifest = self._load_manifest()
                entry = self._entry(manifest, round_name)
                if entry is None:  # directory made outside begin_round (e.g. by hand): register it
                    entry = {"name": round_name, "created": _now(), "meta": {}}
                    manifest["rounds"].append(entry)
                entry.update(num_labels=len(done), complete=True, completed=_now())
                manifest["current"] = round_name
                self._save_manifest(manifest)
        barrier()
        self._known_complete.add(round_name)

    def set_current(self, round_name: str) -> None:
        """Makes an earlier complete round current again (rank 0 writes the manifest)."""
        with self._manifest_lock():
            manifest = self._load_manifest()
            entry = self._entry(manifest, round_name)
            if entry is None or not entry.get("complete"):
                raise ValueError(f"pseudo-label round {round_name!r} is not a complete round of {self.root}")
            manifest["current"] = round_name
            self._save_manifest(manifest)

    def current_round(self) -> str | None:
        """Name of the current (latest completed, unless changed) round, or ``None``."""
        return self._load_manifest()["current"]

    def round_dir(self, name: str | None = None) -> Path:
        """Directory of round ``name`` (default: the current round).

        Raises:
            FileNotFoundError: The store has no such round (the message lists the rounds it has).
        """
        if name is None:
            name = self.current_round()
            if name is None:
                raise FileNotFoundError(f"pseudo-label store {self.root} has no completed round yet")
        path = self._round_path(name)
        if not path.is_dir():
            known = [r["name"] for r in self.rounds()]
            raise FileNotFoundError(f"pseudo-label store {self.root} has no round {name!r} (rounds: {known})")
        return path

    def rounds(self) -> list[dict[str, Any]]:
        """Manifest entries of all rounds, oldest first (copies; editing them changes nothing)."""
        return json.loads(json.dumps(self._load_manifest()["rounds"]))

    def round(self, name: str) -> dict[str, Any] | None:
        """The manifest entry of round ``name`` (a copy), or ``None`` when the store has no such round."""
        return next((entry for entry in self.rounds() if entry["name"] == name), None)

    def is_complete(self, name: str, ids: Iterable[str]) -> bool:
        """Whether round ``name`` is marked complete and holds a label for every one of ``ids``."""
        entry = self.round(name)
        return bool(entry and entry.get("complete")) and not (set(ids) - self.finished_ids(name))

    def read(self, sample_id: str, round_name: str | None = None) -> np.ndarray:
        """Reads one label as HxW uint8 (from the current round by default)."""
        path = self.round_dir(round_name) / (validate_sample_id(sample_id) + ".png")
        return read_png_gray(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r})"
