"""Launch configs and scripts for DDP: the CPU trainer config, the SLURM and torchrun examples, and a real
2-process ``usod fit`` through ``examples/cli/torchrun.sh`` on the CPU."""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch.distributed as dist
import yaml

from usod.data.synth import write_dataset
from usod.labels import PseudoLabelStore

from ._harness import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [REPO / "examples" / "cli" / "slurm_multinode.sh", REPO / "examples" / "cli" / "torchrun.sh"]
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


@pytest.mark.parametrize("name", ["ddp", "ddp_cpu"])
def test_ddp_trainer_configs(name: str) -> None:
    trainer = yaml.safe_load((REPO / "configs" / "trainer" / f"{name}.yaml").read_text())["trainer"]
    # `callbacks+` appends to the callbacks of earlier configs (jsonargparse list append)
    assert {key.rstrip("+") for key in trainer} <= set(inspect.signature(pl.Trainer.__init__).parameters)
    assert trainer["strategy"] == "ddp" and trainer["num_nodes"] == 1 and trainer["use_distributed_sampler"]
    # SyncBatchNorm only runs on GPUs
    assert trainer["sync_batchnorm"] is (trainer["accelerator"] == "gpu")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_launch_scripts_parse_and_name_existing_configs(script: Path) -> None:
    subprocess.run([BASH, "-n", str(script)], check=True)
    text = script.read_text()
    configs = set(re.findall(r"configs/[\w./-]+\.yaml", text))
    assert "configs/trainer/ddp.yaml" in configs
    missing = sorted(c for c in configs if not (REPO / c).is_file())
    assert not missing, f"{script.name} names missing configs: {missing}"


def _fake_launcher(folder: Path, name: str) -> Path:
    """An executable ``name`` that writes its arguments, one per line, to ``<folder>/<name>.args``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{folder / name}.args"\n')
    path.chmod(0o755)
    return folder / f"{name}.args"


def test_slurm_script_runs_one_usod_task_per_gpu(tmp_path: Path) -> None:
    args = _fake_launcher(tmp_path / "bin", "srun")
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "USOD_ROOT": str(REPO),
        "SLURM_NNODES": "3",
        "SLURM_NTASKS_PER_NODE": "4(x3)",
        "SLURM_CPUS_PER_TASK": "6",
    }
    env.pop("OMP_NUM_THREADS", None)
    subprocess.run([BASH, str(SCRIPTS[0]), "--seed_everything", "1"], check=True, env=env, cwd=tmp_path)
    assert args.read_text().splitlines() == [
        "usod",
        "fit",
        "--config",
        "configs/experiment/a2s_stage1_synth.yaml",
        "--config",
        "configs/trainer/ddp.yaml",
        "--trainer.num_nodes",
        "3",
        "--trainer.devices",
        "4",
        "--seed_everything",
        "1",
    ]


def test_torchrun_script_multinode_arguments(tmp_path: Path) -> None:
    args = _fake_launcher(tmp_path / "bin", "torchrun")
    env = {
        **os.environ,
        "TORCHRUN": str(tmp_path / "bin" / "torchrun"),
        "NNODES": "2",
        "NODE_RANK": "1",
        "MASTER_ADDR": "node001",
        "NPROC_PER_NODE": "4",
        "SUBCOMMAND": "validate",
    }
    subprocess.run([BASH, str(SCRIPTS[1]), "--ckpt_path", "best.ckpt"], check=True, env=env, cwd=REPO)
    got = args.read_text().splitlines()
    assert got[: got.index("-m")] == [
        "--nnodes",
        "2",
        "--nproc-per-node",
        "4",
        "--node-rank",
        "1",
        "--master-addr",
        "node001",
        "--master-port",
        "29500",
    ]
    assert got[got.index("-m") :] == [
        "-m",
        "usod.cli",
        "validate",
        "--config",
        "configs/experiment/a2s_stage1_synth.yaml",
        "--config",
        "configs/trainer/ddp.yaml",
        "--trainer.num_nodes",
        "2",
        "--trainer.devices",
        "4",
        "--ckpt_path",
        "best.ckpt",
    ]


def test_launch_scripts_run_the_pipeline_with_matching_devices(tmp_path: Path) -> None:
    """``SUBCOMMAND=pipeline``: ``usod pipeline`` with ``--num-nodes``/``--devices`` from the launcher."""
    srun = _fake_launcher(tmp_path / "bin", "srun")
    torchrun = _fake_launcher(tmp_path / "bin", "torchrun")
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "USOD_ROOT": str(REPO),
        "SUBCOMMAND": "pipeline",
        "PIPELINE": "configs/pipeline/a2s_duts.yaml",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "4",
        "TORCHRUN": str(tmp_path / "bin" / "torchrun"),
        "NNODES": "1",
        "NPROC_PER_NODE": "8",
    }
    subprocess.run([BASH, str(SCRIPTS[0]), "--out", "runs/a2s"], check=True, env=env, cwd=tmp_path)
    subprocess.run([BASH, str(SCRIPTS[1]), "--out", "runs/a2s"], check=True, env=env, cwd=REPO)
    tail = ["--config", "configs/pipeline/a2s_duts.yaml", "--num-nodes"]
    assert srun.read_text().splitlines() == [
        "usod",
        "pipeline",
        *tail,
        "2",
        "--devices",
        "4",
        "--out",
        "runs/a2s",
    ]
    got = torchrun.read_text().splitlines()
    assert got[got.index("-m") :] == [
        "-m",
        "usod.cli",
        "pipeline",
        *tail,
        "1",
        "--devices",
        "8",
        "--out",
        "runs/a2s",
    ]
    # and the pipeline command takes those options
    from usod.commands import pipeline

    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    args = parser.parse_args([*tail, "2", "--devices", "4", "--strategy", "ddp"])
    assert (args.num_nodes, args.devices, args.strategy) == (2, 4, "ddp")
    assert parser.parse_args(["--config", "x.yaml", "--devices", "0,1"]).devices == "0,1"


def _tiny_stage2_experiment(tmp_path: Path) -> Path:
    """SaliencyDetector (OLR from the first epoch) on 5 tiny images, writing label rounds to a store."""
    data = write_dataset(tmp_path / "data", "rgb", 5, size=(40, 48))
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {
                    "class_path": "usod.labels.LabelRoundWriter",
                    "init_args": {"store": str(tmp_path / "store")},
                }
            ],
        },
        "model": {
            "class_path": "usod.models.saliency_detector.SaliencyDetector",
            "init_args": {
                "backbone": {"name": "test_resnet", "weights": "none"},
                "channels": 8,
                "label_update": "olr",
                "olr_warmup_epochs": 0,
                "lr_milestones": [],
            },
        },
        "data": {
            "class_path": "usod.data.datamodules.RGBDataModule",
            "init_args": {
                "dataset": "folder",
                "root": str(data),
                "pseudo_dir": str(data / "masks"),
                "image_size": 64,
                "batch_size": 2,
                "num_workers": 0,
                "augment": False,
            },
        },
    }
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_torchrun_example_fits_on_two_cpu_processes(tmp_path: Path) -> None:
    """``usod fit`` with ``configs/trainer/ddp_cpu.yaml`` on 2 processes started by ``torchrun.sh``.

    (Plain ``usod fit --config EXPERIMENT --config configs/trainer/ddp_cpu.yaml``, where Lightning starts the
    second process itself, runs the same way; one end-to-end run is kept to save test time.)
    """
    experiment = _tiny_stage2_experiment(tmp_path)
    runs = tmp_path / "runs"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": str(free_port()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.update(
        TORCHRUN=f"{sys.executable} -m torch.distributed.run",
        NPROC_PER_NODE="2",
        EXPERIMENT=str(experiment),
        TRAINER_CONFIG="configs/trainer/ddp_cpu.yaml",
    )
    result = subprocess.run(
        [BASH, str(SCRIPTS[1]), "--trainer.default_root_dir", str(runs)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    # the label round holds every image once; one run folder, one checkpoint, written by rank 0
    store = PseudoLabelStore(tmp_path / "store")
    assert store.current_round() == "stage2-epoch0"
    assert store.rounds()[0]["num_labels"] == 5 and store.rounds()[0]["complete"]
    assert [p.name for p in (runs / "lightning_logs").iterdir()] == ["version_0"]
    run = runs / "lightning_logs" / "version_0"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["epoch=0-step=2.ckpt"]  # 3 images per rank
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert str(saved["trainer"]["devices"]) == "2" and saved["trainer"]["strategy"] == "ddp"
