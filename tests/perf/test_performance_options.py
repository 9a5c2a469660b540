"""PerformanceOptions: channels-last gives the same outputs as contiguous; torch.compile is wired in."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers.training import quiet_trainer as trainer
from tests.perf.tiny import MODULES, WARNINGS, build, samples
from usod.callbacks import PerformanceOptions
from usod.callbacks.performance import compile_targets, to_channels_last

pytestmark = [pytest.mark.filterwarnings(w) for w in WARNINGS]


def predictions(module, data, callbacks=()) -> torch.Tensor:  # noqa: ANN001
    out = trainer(callbacks=list(callbacks)).predict(module, DataLoader(data, batch_size=2))
    return torch.cat([o["saliency"] for o in out])


def test_to_channels_last_converts_4d_float_tensors_only() -> None:
    batch = {"image": torch.rand(2, 3, 8, 8), "size": torch.ones(2, 2, dtype=torch.long), "id": ["a", "b"]}
    batch["idx"] = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    out = to_channels_last(batch)
    assert out is batch
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert not batch["image"].is_contiguous()
    assert batch["idx"].is_contiguous() and batch["id"] == ["a", "b"]


@pytest.mark.parametrize("name", MODULES)
def test_channels_last_matches_contiguous_and_trains(name: str, tmp_path: Path) -> None:
    module = build(name, tmp_path)
    data = samples(n=2 if name == "sdg" else 4, caption=name == "sdg")  # captioning is the slow part
    reference = predictions(module, data)
    fast = copy.deepcopy(module)
    options = PerformanceOptions(channels_last=True)
    got = predictions(fast, data, [options])
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=1e-4)
    # a training step in channels-last: finite loss, and the weights move
    before = [p.detach().clone() for p in fast.parameters() if p.requires_grad]
    loader = DataLoader(data, batch_size=2)
    trainer(max_epochs=1, limit_train_batches=1, callbacks=[options]).fit(fast, loader)
    after = [p.detach() for p in fast.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(torch.isfinite(p).all() for p in after)


def test_compile_targets_of_every_module(tmp_path: Path) -> None:
    from usod.models.cue_extractor import CueExtractor

    cue = build("cue_extractor", tmp_path)
    assert isinstance(cue, CueExtractor)
    targets = compile_targets(cue)
    assert targets[0] is cue.model.encoder and len(targets) == 1 + len(cue.model.stage_heads) + 1
    sal = build("saliency_detector", tmp_path)
    assert compile_targets(sal) == [sal.model]
    adapter = build("adapter_transfer", tmp_path)
    assert compile_targets(adapter) == [adapter.base.model]
    with pytest.raises(ValueError, match="compile_mode"):
        PerformanceOptions(compile=True, compile_mode="fastest")


@pytest.mark.parametrize("name", ["cue_extractor", "saliency_detector"])
def test_compile_eager_backend_runs_the_compiled_modules(name: str, tmp_path: Path) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    module = build(name, tmp_path)
    data = samples()
    reference = predictions(module, data)
    compiled = copy.deepcopy(module)
    options = PerformanceOptions(compile=True, compile_backend="eager")
    got = predictions(compiled, data, [options])
    assert options.compiled == compile_targets(compiled)
    assert all(t._compiled_call_impl is not None for t in options.compiled)
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
    # checkpoint keys are unchanged by in-place compilation
    assert compiled.state_dict().keys() == module.state_dict().keys()
    stats = torch._dynamo.utils.counters["stats"]
    assert stats["unique_graphs"] > 0  # dynamo traced the network
    loader = DataLoader(data, batch_size=2)
    trainer(max_epochs=1, limit_train_batches=1, callbacks=[options]).fit(compiled, loader)
    # setting up again (fit after predict) does not compile twice
    assert len(options.compiled) == len(compile_targets(compiled))


def test_pipeline_and_trainer_configs_carry_the_options(tmp_path: Path) -> None:
    import yaml

    from usod.pipelines import PipelineConfig
    from usod.pipelines.steps import step_trainer

    config = PipelineConfig(
        out=tmp_path, accelerator="cpu", precision="bf16-mixed", performance={"channels_last": True}
    )
    trainer = step_trainer(config, 1, "stage1")
    assert trainer.precision == "bf16-mixed"
    (options,) = [c for c in trainer.callbacks if isinstance(c, PerformanceOptions)]
    assert options.channels_last and not options.compile
    repo = Path(__file__).resolve().parents[2]
    for name in ("gpu", "ddp"):
        trainer_config = yaml.safe_load((repo / f"configs/trainer/{name}.yaml").read_text())["trainer"]
        (callback,) = trainer_config["callbacks+"]  # appended to earlier configs' callbacks
        assert callback["class_path"] == "usod.callbacks.PerformanceOptions"
        PerformanceOptions(**callback["init_args"])  # the arguments exist
