"""``usod.distributed``: ranks from the launcher's environment, and the process group made under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from usod import distributed

from ._harness import free_port

REPO = Path(__file__).resolve().parents[2]
LAUNCH_VARS = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "env,zero",
    [
        ({}, True),
        ({"RANK": "0"}, True),
        ({"RANK": "3"}, False),
        ({"SLURM_PROCID": "1"}, False),
        ({"SLURM_PROCID": "0", "LOCAL_RANK": "0"}, True),
        ({"LOCAL_RANK": "1"}, False),  # Lightning's own launcher, before the group exists
        ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False),
        ({"NODE_RANK": "0", "LOCAL_RANK": "0"}, True),
    ],
)
def test_rank_zero_from_the_launcher_environment(clean_env, env: dict[str, str], zero: bool) -> None:
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert distributed.is_rank_zero() is zero
    assert distributed.rank_world() == (0, 1)  # no group: nothing is sharded
    distributed.barrier()  # no group: returns at once


def test_no_group_in_a_single_process(clean_env) -> None:
    assert distributed.init_from_launcher("cpu") is False
    assert not dist.is_initialized()


SCRIPT = """
import json, sys
import torch.distributed as dist
from usod import distributed
created = distributed.init_from_launcher("cpu")
rank, world = distributed.rank_world()
ranks = [None] * world
dist.all_gather_object(ranks, rank)
distributed.barrier()
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump({"created": created, "backend": dist.get_backend(), "world": world, "ranks": ranks,
               "zero": distributed.is_rank_zero(), "again": distributed.init_from_launcher("cpu")}, f)
"""


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_init_from_launcher_under_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {
        **{k: v for k, v in os.environ.items() if k not in LAUNCH_VARS},
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    logs = tmp_path / "logs"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(free_port()), "--log-dir", str(logs), "--redirects", "3"]
    command += [str(script), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    ranks = "".join(
        f"--- {p.relative_to(logs)}\n{p.read_text()[-2000:]}" for p in sorted(logs.rglob("std*.log"))
    )
    assert result.returncode == 0, result.stderr[-2000:] + ranks
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {
            "created": True,
            "backend": "gloo",
            "world": 2,
            "ranks": [0, 1],
            "zero": rank == 0,
            "again": False,
        }


def test_the_process_group_is_taken_down_at_exit(tmp_path: Path) -> None:
    import torch.distributed as dist

    import usod.distributed as ud

    ud.destroy_group_at_exit()
    ud.destroy_group_at_exit()  # registered once
    assert ud._DESTROY_REGISTERED
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert dist.is_initialized()
    ud._destroy_group()  # what runs at exit
    assert not dist.is_initialized()
    ud._destroy_group()  # and nothing happens without a group
