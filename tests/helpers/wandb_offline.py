"""Read what an offline wandb run recorded (its ``run-<id>.wandb`` file), without network or wandb's server.

wandb 0.31 keeps an offline run's history, summary and config in one record file (the LevelDB log format:
32 KiB blocks of ``crc32 | length | type | data`` chunks holding ``wandb_internal_pb2.Record`` messages),
next to ``files/media/`` with the logged images and tables.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7  # b":W&B" + magic (2 bytes) + version (1 byte)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What a run recorded."""

    folder: Path
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None

    def keys(self) -> set[str]:
        """Top-level keys of every history row (``a/b`` nested keys give ``a``)."""
        return {key.split("/", 1)[0] for row in self.history for key in row}

    def values(self, key: str) -> list[Any]:
        """Every logged value of a scalar ``key``, in order."""
        return [row[key] for row in self.history if key in row]

    def media(self, kind: str) -> list[Path]:
        """Files under ``files/media/<kind>`` (``images``, ``table``)."""
        return sorted((self.folder / "files" / "media" / kind).glob("*"))


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb run file")
    out, buf, pos = [], b"", _HEADER
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            out.append(buf)
            buf = b""
    return out


def read_offline_run(folder: Path, wait_s: float = 20.0) -> OfflineRun:
    """Parse ``folder`` (an ``offline-run-*`` directory).

    ``wandb.finish()`` can return before wandb's service process has written the last records, so this
    waits (up to ``wait_s``) for the run's ``exit`` record.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + wait_s
    while True:
        files = sorted(folder.glob("run-*.wandb"))
        records = _records(files[0]) if files else []
        kinds = []
        for data in records:
            rec = pb.Record()
            rec.ParseFromString(data)
            kinds.append(rec.WhichOneof("record_type"))
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not files:
        raise FileNotFoundError(f"{folder}: no run-*.wandb file")
    run = OfflineRun(folder)
    for data in records:
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.name, run.group, run.job_type = rec.run.display_name, rec.run.run_group, rec.run.job_type
            run.tags = list(rec.run.tags)
            items = rec.run.config.update
        elif kind == "config":
            items = rec.config.update
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
            continue
        elif kind == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            run.history.append(row)
            continue
        else:
            continue
        for item in items:
            key = item.key or "/".join(item.nested_key)
            if key and not key.startswith("_"):
                run.config[key] = json.loads(item.value_json)
    return run


def offline_runs(root: Path) -> list[OfflineRun]:
    """Every offline run under ``root`` (searched recursively), oldest first."""
    return [read_offline_run(p) for p in sorted(root.rglob("offline-run-*")) if p.is_dir()]
