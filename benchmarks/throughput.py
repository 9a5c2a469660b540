"""Training and inference throughput (images/s) of every usod module: library vs plain PyTorch vs naive fp32.

Usage::

    python benchmarks/throughput.py [--device cpu|cuda] [--image-size 320] [--backbone resnet50]
        [--batch-size 16] [--steps 20] [--modules cue_extractor,saliency_detector,...] [--json OUT.json]

For each module three ways of running the same network on the same synthetic batches are timed:

* ``library``: the usod LightningModule in a Lightning ``Trainer`` (its own ``training_step`` /
  ``predict_step``) with the speed options on: ``precision="bf16-mixed"`` and channels-last on a GPU
  (``--precision``, ``--channels-last``), ``torch.compile`` with ``--compile``, cuDNN autotuning, pinned
  memory, and for the cue extractor (A2S stage 1) its frozen-encoder feature cache.
* ``plain``: a hand-written PyTorch loop over the same ``torch_model``, loss and optimizer (the module's
  ``configure_optimizers``), with the same options (autocast, channels-last, compile, the feature cache), so
  that ``library / plain`` shows what Lightning and the module's bookkeeping cost.
* ``naive``: the plain loop in float32 with none of the options (no feature cache, no autocast,
  contiguous tensors, no compile, no pinned memory, no cuDNN autotuning), the baseline of the
  ``library / naive`` speed-up. cuDNN may still run its float32 convolutions in TF32 on a GPU (PyTorch's
  default, ``torch.backends.cudnn.allow_tf32``); ``--naive-tf32 off`` measures strict float32 instead.

Batches are synthetic (in memory: images with a bright object, soft pseudo labels), so the numbers measure
the model side; decoding is covered by the datamodules' workers and image cache. Training is timed over the
second of two epochs of ``--steps`` batches (the first fills the feature cache, compiles and autotunes);
inference over ``--steps`` batches after ``--warmup`` batches. The module settings are the A2S ones
without label bookkeeping: stage 2 (``saliency_detector``) and the adapter run with ``label_update="none"``
(the OLR/SPR bank costs CPU time per image on top), DeepUSPS without CRF and moving averages, SDG in its
``sod`` phase.

Prints a table and writes JSON (``--json``) with every setting, the device name and library versions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from usod.callbacks import PerformanceOptions
from usod.callbacks.performance import to_channels_last

MODULES: tuple[str, ...] = ("cue_extractor", "saliency_detector", "deepusps", "sdg", "adapter_transfer")
MODES: tuple[str, ...] = ("library", "plain", "naive")
PHASES: tuple[str, ...] = ("train", "infer")


@dataclass
class Settings:
    """Everything that produced a measurement (written to the JSON)."""

    device: str = "cpu"
    image_size: int = 320
    backbone: str = "resnet50"
    sdg_backbone: str = "pvt_v2_b0"
    batch_size: int = 16
    steps: int = 20
    warmup: int = 3
    modules: list[str] = field(default_factory=lambda: list(MODULES))
    modes: list[str] = field(default_factory=lambda: list(MODES))
    phases: list[str] = field(default_factory=lambda: ["train", "infer"])
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    feature_cache: bool = True
    feature_cache_dtype: str = "bfloat16"
    feature_cache_storage: str = "device"
    num_workers: int = 0
    naive_tf32: bool = True
    threads: int | None = None
    seed: int = 0

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16-mixed" if self.device.startswith("cuda") else "32-true"

    def resolved_channels_last(self) -> bool:
        return self.device.startswith("cuda") if self.channels_last is None else self.channels_last


# ------------------------------------------------------------------------------------------------- data
class SyntheticSOD(Dataset):
    """In-memory samples: a noisy background with a bright ellipse, its soft pseudo label, an id."""

    def __init__(self, n: int, size: int, seed: int = 0, caption: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.samples = []
        for i in range(n):
            cy, cx, ry, rx = (torch.rand(4, generator=g) * torch.tensor([0.8, 0.8, 0.4, 0.4]) + 0.2).tolist()
            inside = (((yy - cy + 0.6) / ry) ** 2 + ((xx - cx + 0.6) / rx) ** 2) <= 1.0
            mask = inside.float()[None]
            colour = torch.rand(3, 1, 1, generator=g)
            image = 0.3 * torch.rand(3, size, size, generator=g) + 0.6 * mask * colour
            sample = {
                "image": image.clamp(0, 1),
                "pseudo": F.avg_pool2d(mask[None], 5, 1, 2)[0],
                "id": f"img{i:05d}",
                "size": torch.tensor([size, size]),
            }
            if caption:
                sample["caption"] = "a bright object"
            self.samples.append(sample)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.samples[index]


def _loader(dataset: Dataset, s: Settings, optimised: bool) -> DataLoader:
    workers = s.num_workers
    return DataLoader(
        dataset,
        batch_size=s.batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=optimised and s.device.startswith("cuda"),
        persistent_workers=workers > 0,
        drop_last=True,
    )


def _to_device(batch: dict[str, Any], device: torch.device, optimised: bool, channels_last: bool) -> dict:
    out = {k: v.to(device, non_blocking=optimised) if isinstance(v, Tensor) else v for k, v in batch.items()}
    return to_channels_last(out) if channels_last else out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- modules
def build_module(name: str, s: Settings, workdir: Path, feature_cache: bool) -> pl.LightningModule:
    """The usod LightningModule ``name`` at the benchmark's settings (random weights, no download)."""
    torch.manual_seed(s.seed)
    backbone = {"name": s.backbone, "weights": "none"}
    if name == "cue_extractor":
        from usod.models.cue_extractor import CueExtractor

        return CueExtractor(
            backbone=backbone,
            train_flip="both",
            lr_milestones=(),
            feature_cache=feature_cache,
            feature_cache_dtype=s.feature_cache_dtype,
            feature_cache_storage=s.feature_cache_storage,
        )
    if name == "saliency_detector":
        from usod.models.saliency_detector import SaliencyDetector

        return SaliencyDetector(backbone=backbone, label_update="none", lr_milestones=())
    if name == "deepusps":
        from usod.models.deepusps import DeepUSPSRefiner

        return DeepUSPSRefiner(backbone=backbone, crf=None, mva=False)
    if name == "sdg":
        from usod.models.sdg import SDGCaptionGuided

        return SDGCaptionGuided(
            phase="sod",
            vocab=["[PAD]", "[UNK]", "[SOS]", "[EOS]", "a", "bright", "object"],
            backbone={"name": s.sdg_backbone, "weights": "none"},
            caption_backbone={"name": "mobilenetv3_small_050", "weights": "none", "out_indices": [4]},
            caption_image_size=64,
        )
    if name == "adapter_transfer":
        from usod.models.adapter_transfer import AdapterTransfer
        from usod.models.base import CLASS_KEY
        from usod.models.saliency_detector import SaliencyDetector

        path = workdir / f"base-{s.backbone}.ckpt"
        if not path.is_file():
            base = SaliencyDetector(backbone=backbone, label_update="none")
            torch.save(
                {
                    "state_dict": base.state_dict(),
                    "hyper_parameters": dict(base.hparams),
                    CLASS_KEY: f"{type(base).__module__}.{type(base).__qualname__}",
                },
                path,
            )
        return AdapterTransfer(base=str(path), label_update="none", initial_labels="raw", lr_milestones=())
    raise ValueError(f"unknown module {name!r}; expected one of {MODULES}")


def _optimizer(module: pl.LightningModule) -> torch.optim.Optimizer:
    config = module.configure_optimizers()
    return config["optimizer"] if isinstance(config, dict) else config


class PlainSteps:
    """Training and inference steps of a module's plain network, loss and optimizer (no Lightning)."""

    def __init__(self, name: str, module: pl.LightningModule, feature_cache: bool) -> None:
        self.name = name
        self.module = module
        self.optimizer = _optimizer(module)
        self.cache = None
        if name == "cue_extractor" and feature_cache:
            from usod.models.cue_extractor.lightning_model import _CACHE_DTYPES, FeatureCache

            hp = module.hparams
            self.cache = FeatureCache(_CACHE_DTYPES[hp.feature_cache_dtype], storage=hp.feature_cache_storage)
        module.train()

    # -- the network ------------------------------------------------------------------------------------
    def _stage1_features(self, views: Tensor, ids: list[str], flips: list[bool]) -> list[Tensor]:
        model = self.module.model
        if self.cache is None:
            return model.encode(views)
        from usod.models.cue_extractor.lightning_model import FeatureCache

        keys = [(i, f) for i, f in zip(ids, flips, strict=True)]
        thumbs = FeatureCache.thumbnail(views)
        found = [self.cache.get(k, t) for k, t in zip(keys, thumbs, strict=True)]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            fresh = model.encode(views[missing])
            for j, i in enumerate(missing):
                found[i] = self.cache.put(keys[i], thumbs[i], [f[j] for f in fresh])
        return [
            torch.stack([f[k] for f in found]).to(views.device, torch.float32)  # type: ignore[index]
            for k in range(model.num_stages)
        ]

    def loss(self, batch: dict[str, Any]) -> Tensor:
        images, module = batch["image"], self.module
        if self.name == "cue_extractor":
            b = images.shape[0]
            views = torch.cat([images, images.flip(-1)])
            feats = self._stage1_features(views, [*batch["id"], *batch["id"]], [False] * b + [True] * b)
            out = module.model.decode(feats, views.shape[-2:])
            return module.loss_fn(out.all_thetas)
        if self.name == "sdg":
            return module.loss_fn(module.model(images, None), batch["pseudo"])
        flips = (torch.rand(images.shape[0]) < 0.5).to(images.device).view(-1, 1, 1, 1)
        views = torch.where(flips, images.flip(-1), images)
        target = batch["pseudo"]
        if self.name == "deepusps":
            from usod.models.deepusps.loss import binarize_targets

            hp = module.hparams
            target = binarize_targets(target, hp.target_threshold, hp.adaptive_factor)
            probs = torch.sigmoid(module.model(views))
            return module.loss_fn(probs, torch.where(flips, target.flip(-1), target))
        network = module.base.model if self.name == "adapter_transfer" else module.model
        return module.loss_fn(network(views), torch.where(flips, target.flip(-1), target))

    def saliency(self, images: Tensor) -> Tensor:
        module = self.module
        if self.name == "cue_extractor":
            return module.model(images).saliency.float()
        if self.name == "sdg":
            return torch.sigmoid(module.model(images, None).float())
        network = module.base.model if self.name == "adapter_transfer" else module.model
        return torch.sigmoid(network(images).float())

    # -- the steps --------------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, Any], autocast: AbstractContextManager) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast:  # the forward pass and loss only, as PyTorch recommends for autocast
            loss = self.loss(batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


# ----------------------------------------------------------------------------------------------- timing
@dataclass
class Measurement:
    """Images processed in the timed window, its wall-clock seconds and this process's CPU seconds.

    On a shared CPU the wall clock includes waiting for other processes; the CPU time (summed over this
    process's threads) does not, so ``images / cpu_seconds`` is the steadier figure there.
    """

    images: int
    seconds: float
    cpu_seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def images_per_cpu_s(self) -> float:
        return self.images / max(self.cpu_seconds, 1e-9)


class WindowTimer(pl.Callback):
    """Wall time from the start of the first timed batch to the end of the last (device synchronised)."""

    def __init__(self, device: torch.device, train_epoch: int, predict_from: int) -> None:
        self.device = device
        self.train_epoch = train_epoch
        self.predict_from = predict_from
        self.start: float | None = None
        self.end: float | None = None
        self.cpu_start = self.cpu_end = 0.0
        self.images = 0

    def _begin(self, batch: dict[str, Any]) -> None:
        if self.start is None:
            _sync(self.device)
            self.start = time.perf_counter()
            self.cpu_start = time.process_time()
        self.images += int(batch["image"].shape[0])

    def _finish(self) -> None:
        _sync(self.device)
        self.end = time.perf_counter()
        self.cpu_end = time.process_time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == self.train_epoch:
            self._begin(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.current_epoch == self.train_epoch:
            self._finish()

    def on_predict_batch_start(  # noqa: ANN001
        self, trainer, pl_module, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx >= self.predict_from:
            self._begin(batch)

    def on_predict_batch_end(  # noqa: ANN001
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx >= self.predict_from:
            self._finish()

    def result(self) -> Measurement:
        if self.start is None or self.end is None or self.images == 0:
            raise RuntimeError("no timed batch ran")
        return Measurement(self.images, self.end - self.start, self.cpu_end - self.cpu_start)


def _options(s: Settings, optimised: bool) -> PerformanceOptions:
    return PerformanceOptions(
        channels_last=optimised and s.resolved_channels_last(),
        compile=optimised and s.compile,
        compile_mode=s.compile_mode,
        compile_backend=s.compile_backend,
    )


def _autocast(s: Settings, device: torch.device, optimised: bool) -> AbstractContextManager:
    precision = s.resolved_precision()
    if not optimised or precision in ("32-true", "32"):
        return nullcontext()
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if dtype is None:
        raise ValueError(f"--precision {precision!r}: use 32-true, bf16-mixed or 16-mixed")
    return torch.autocast(device.type, dtype=dtype)


def run_library(name: str, s: Settings, workdir: Path, phase: str) -> Measurement:
    device = torch.device(s.device)
    module = build_module(name, s, workdir, feature_cache=s.feature_cache)
    timer = WindowTimer(device, train_epoch=1, predict_from=s.warmup)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision=s.resolved_precision(),
        benchmark=device.type == "cuda",
        max_epochs=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_options(s, True), timer],
    )
    caption = name == "sdg"
    if phase == "train":
        data = SyntheticSOD(s.batch_size * s.steps, s.image_size, s.seed, caption)
        trainer.fit(module, _loader(data, s, optimised=True))
    else:
        data = SyntheticSOD(s.batch_size * (s.steps + s.warmup), s.image_size, s.seed, caption)
        trainer.predict(module, _loader(data, s, optimised=True), return_predictions=False)
    return timer.result()


def run_plain(name: str, s: Settings, workdir: Path, phase: str, optimised: bool) -> Measurement:
    device = torch.device(s.device)
    module = build_module(name, s, workdir, feature_cache=optimised and s.feature_cache)
    channels_last = optimised and s.resolved_channels_last()
    _options(s, optimised).apply(module)
    module.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = optimised
    steps = PlainSteps(name, module, feature_cache=optimised and s.feature_cache)
    caption = name == "sdg"

    def batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
        for batch in loader:
            yield _to_device(batch, device, optimised, channels_last)

    if phase == "train":
        loader = _loader(SyntheticSOD(s.batch_size * s.steps, s.image_size, s.seed, caption), s, optimised)
        module.train()
        for batch in batches(loader):  # warm-up epoch
            steps.train_step(batch, _autocast(s, device, optimised))
        _sync(device)
        start, cpu_start, images = time.perf_counter(), time.process_time(), 0
        for batch in batches(loader):
            steps.train_step(batch, _autocast(s, device, optimised))
            images += batch["image"].shape[0]
    else:
        data = SyntheticSOD(s.batch_size * (s.steps + s.warmup), s.image_size, s.seed, caption)
        module.eval()
        start, cpu_start, images = 0.0, 0.0, 0
        with torch.inference_mode():
            for i, batch in enumerate(batches(_loader(data, s, optimised))):
                if i == s.warmup:
                    _sync(device)
                    start, cpu_start = time.perf_counter(), time.process_time()
                with _autocast(s, device, optimised):
                    steps.saliency(batch["image"])
                if i >= s.warmup:
                    images += batch["image"].shape[0]
    _sync(device)
    return Measurement(images, time.perf_counter() - start, time.process_time() - cpu_start)


def measure(name: str, mode: str, phase: str, s: Settings, workdir: Path) -> Measurement:
    """Throughput of one module, mode (library/plain/naive) and phase (train/infer)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if mode == "library":
        return run_library(name, s, workdir, phase)
    # PyTorch's default lets cuDNN run float32 convolutions in TF32; --naive-tf32 off makes them true fp32
    default_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = default_tf32 if mode == "plain" or s.naive_tf32 else False
    try:
        return run_plain(name, s, workdir, phase, optimised=mode == "plain")
    finally:
        torch.backends.cudnn.allow_tf32 = default_tf32


# ---------------------------------------------------------------------------------------------- reporting
def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)"


def environment(s: Settings) -> dict[str, Any]:
    import timm

    return {
        "device": s.device,
        "device_name": device_name(s.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "lightning": pl.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def table(results: list[dict[str, Any]], key: str = "images_per_s") -> str:
    """A markdown table of ``key`` per module and phase, with the library's ratios to the loops."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for r in results:
        rows.setdefault((r["module"], r["phase"]), {})[r["mode"]] = r[key]
    lines = [
        "| module | phase | library img/s | plain img/s | naive fp32 img/s | library / plain "
        "| library / naive |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{a / b:.2f}x"

    for (module, phase), v in rows.items():
        lib, plain, naive = v.get("library"), v.get("plain"), v.get("naive")
        lines.append(
            f"| {module} | {phase} | {cell(lib)} | {cell(plain)} | {cell(naive)} | {ratio(lib, plain)} | "
            f"{ratio(lib, naive)} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--image-size", type=int, default=320)
    p.add_argument("--backbone", default="resnet50", help="timm encoder of every module but SDG")
    p.add_argument("--sdg-backbone", default="pvt_v2_b0", help="timm encoder of SDG's PVT-SOD network")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed batches per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed inference batches first")
    p.add_argument("--modules", default=",".join(MODULES), help=f"comma-separated subset of {MODULES}")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    p.add_argument("--phases", default="train,infer", help="comma-separated subset of train,infer")
    p.add_argument("--precision", default="auto", help="auto: bf16-mixed on cuda, 32-true on cpu")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="auto: on cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (library and plain)")
    p.add_argument("--compile-mode", default=None)
    p.add_argument("--compile-backend", default="inductor", help="inductor; eager only traces (for checks)")
    p.add_argument("--no-feature-cache", action="store_true", help="cue extractor without its feature cache")
    p.add_argument("--feature-cache-dtype", default="bfloat16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--feature-cache-storage", default="device", choices=("device", "cpu"))
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (in-memory samples)")
    p.add_argument(
        "--naive-tf32",
        choices=("on", "off"),
        default="on",
        help="naive loop with PyTorch's default TF32 cuDNN convolutions (on) or strict fp32 (off)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    a = p.parse_args(argv)
    modules = [m.strip() for m in a.modules.split(",") if m.strip()]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    phases = [m.strip() for m in a.phases.split(",") if m.strip()]
    checks = ((modules, MODULES, "--modules"), (modes, MODES, "--modes"), (phases, PHASES, "--phases"))
    for value, allowed, flag in checks:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            p.error(f"{flag}: unknown {unknown}; expected a subset of {allowed}")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    s = Settings(
        device=a.device,
        image_size=a.image_size,
        backbone=a.backbone,
        sdg_backbone=a.sdg_backbone,
        batch_size=a.batch_size,
        steps=a.steps,
        warmup=a.warmup,
        modules=modules,
        modes=modes,
        precision=a.precision,
        channels_last=None if a.channels_last == "auto" else a.channels_last == "on",
        compile=a.compile,
        compile_mode=a.compile_mode,
        compile_backend=a.compile_backend,
        feature_cache=not a.no_feature_cache,
        feature_cache_dtype=a.feature_cache_dtype,
        feature_cache_storage=a.feature_cache_storage,
        num_workers=a.num_workers,
        naive_tf32=a.naive_tf32 == "on",
        threads=a.threads,
        phases=phases,
    )
    return s, a.json


def main(argv: list[str] | None = None) -> dict[str, Any]:
    settings, json_path = parse_args(argv)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    phases = settings.phases
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*in eval mode.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    env = environment(settings)
    print(f"device: {env['device_name']}; torch {env['torch']}, lightning {env['lightning']}")
    results = []
    with tempfile.TemporaryDirectory(prefix="usod-throughput-") as tmp:
        for name in settings.modules:
            for phase in phases:
                for mode in settings.modes:
                    m = measure(name, mode, phase, settings, Path(tmp))
                    results.append(
                        {
                            "module": name,
                            "phase": phase,
                            "mode": mode,
                            "images_per_s": m.images_per_s,
                            "images_per_cpu_s": m.images_per_cpu_s,
                            "seconds": m.seconds,
                            "cpu_seconds": m.cpu_seconds,
                            "images": m.images,
                        }
                    )
                    print(
                        f"  {name:18s} {phase:5s} {mode:8s} {m.images_per_s:9.1f} img/s "
                        f"({m.images} images, {m.seconds:.2f} s wall, {m.cpu_seconds:.2f} s CPU)",
                        flush=True,
                    )
    if hasattr(os, "getloadavg"):
        env["load_average_end"] = os.getloadavg()
    report = {
        "settings": {
            **asdict(settings),
            "precision": settings.resolved_precision(),
            "channels_last": settings.resolved_channels_last(),
        },
        "environment": env,
        "results": results,
    }
    print("\nimages/s (wall clock):")
    print(table(results))
    if not settings.device.startswith("cuda"):
        print("\nimages per CPU second of this process (steadier on a shared machine):")
        print(table(results, key="images_per_cpu_s"))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {json_path}")
    return report


if __name__ == "__main__":
    main()
