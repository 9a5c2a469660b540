"""The ``usod`` command line.

``usod fit|validate|test|predict --config ...`` go to :class:`UsodCLI`, a LightningCLI in subclass mode for
models and data (``usod predict --ckpt ... --input ... --output ...`` is the simple folder predictor instead).
Every other command is a small module in :mod:`usod.commands` with ``add_arguments`` and ``run`` (or, when
it parses its own options, ``parse_args(prog, argv)`` and ``run``).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

# command path -> (module, one-line help); modules are imported only when their command runs.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("list",): ("usod.commands.list_cmd", "list registered datasets, datamodules and models"),
    ("data", "inspect"): ("usod.commands.data_inspect", "check a dataset folder and count its samples"),
    ("data", "synth"): ("usod.commands.data_synth", "write the embedded synthetic dataset"),
    ("evaluate",): ("usod.commands.evaluate", "score saliency maps against ground truth"),
    ("label",): ("usod.commands.label", "write a round of pseudo labels for a dataset with a checkpoint"),
    ("pipeline",): ("usod.commands.pipeline", "stage 1, pseudo labels, stage 2 and evaluation from a YAML"),
    ("demo",): ("usod.commands.demo", "run the unsupervised pipeline on the embedded synthetic data"),
    ("handcrafted",): (
        "usod.commands.handcrafted",
        "handcrafted saliency maps (RBD, MC, DSR, MR) for a folder",
    ),
}
FOLDER_PREDICT = ("usod.commands.predict", "predict saliency maps for a folder of images or a video file")


def lightning_main(args: Sequence[str] | None = None) -> None:
    """Run the Lightning CLI (imports Lightning and the model zoo only here)."""
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    class UsodCLI(LightningCLI):
        """LightningCLI over every registered LightningModule and LightningDataModule.

        Loggers with a ``describe(model, datamodule)`` method (:class:`usod.loggers.UsodWandbLogger`) learn
        the method and dataset before the run starts, so that runs are named and grouped by them.
        """

        def after_instantiate_classes(self) -> None:
            super().after_instantiate_classes()
            trainer = getattr(self, "trainer", None)
            for logger in getattr(trainer, "loggers", None) or []:
                describe = getattr(logger, "describe", None)
                if callable(describe):
                    describe(self.model, getattr(self, "datamodule", None))
                    # the whole command-line configuration (trainer, model and data classes, config files),
                    # in the run itself: LightningCLI's config.yaml is shared by every run of a save_dir
                    logger.log_hyperparams({"cli": self._config_dict()})

        def _parse_ckpt_path(self) -> None:
            # Lightning rebuilds the model from the checkpoint's ``_class_path`` and hyper-parameters: check
            # them against usod's registry first, so that a crafted file names no code to import or call
            subcommand = self.config.get("subcommand")
            ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if ckpt_path:
                configured = self.config[subcommand].get("model")
                check_cli_checkpoint(ckpt_path, getattr(configured, "class_path", None))
            super()._parse_ckpt_path()

        def _config_dict(self) -> dict[str, Any]:
            import json

            from jsonargparse import namespace_to_dict

            config = self.config.get(self.subcommand) if self.subcommand else self.config
            return json.loads(json.dumps(namespace_to_dict(config), default=str))

    import usod.models  # noqa: F401  (registers model classes for class_path resolution)
    from usod.progress import progress_enabled

    UsodCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        # the training bar, like every usod bar: on a terminal, unless USOD_PROGRESS says otherwise
        trainer_defaults={"enable_progress_bar": progress_enabled()},
        # None when they are the process's own arguments: LightningCLI then reads sys.argv itself (given
        # both, it warns that args and command-line arguments were mixed)
        args=None if args is None or list(args) == sys.argv[1:] else list(args),
    )


def check_cli_checkpoint(path: str | os.PathLike[str], configured: str | None = None) -> None:
    """Check a ``--ckpt_path`` before LightningCLI reads the model class and arguments from it.

    A usod checkpoint must name a registered usod module (:mod:`usod.models.registry`) whose constructor
    takes its hyper-parameters; when the config names a model class too, they must be the same class.

    Raises:
        FileNotFoundError: No such file.
        InvalidInputError: The file is no readable checkpoint, names a class usod does not know, holds
            hyper-parameters the class does not take, or holds another class than the config's model.
    """
    from pathlib import Path

    from usod.data.io import InvalidInputError
    from usod.models.base import CLASS_KEY, checked_arguments, read_checkpoint
    from usod.models.registry import UnknownModelError, model_class

    path = Path(path)
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    if hparams is None:
        return  # weights only: the configured model is rebuilt, nothing is read from the file
    if not isinstance(hparams, dict):
        raise InvalidInputError(path, f"hyper-parameters must be a mapping, got {type(hparams).__name__}")
    named = hparams.get("_class_path", ckpt.get(CLASS_KEY))
    if named is None:
        return
    try:
        cls = model_class(named)
    except UnknownModelError as err:
        raise InvalidInputError(path, str(err)) from None
    checked_arguments(cls, {k: v for k, v in hparams.items() if not str(k).startswith("_")}, path)
    if configured:
        try:
            same = model_class(configured) is cls
        except UnknownModelError:  # a class of the user's own
            same = configured == f"{cls.__module__}.{cls.__qualname__}"
        if not same:
            raise InvalidInputError(
                path, f"holds a {cls.__name__} checkpoint, but the config's model is {configured}"
            )


def _is_folder_predict(argv: Sequence[str]) -> bool:
    return (
        bool(argv) and argv[0] == "predict" and any(a == "--input" or a.startswith("--input=") for a in argv)
    )


def build_parser() -> argparse.ArgumentParser:
    from usod import __version__

    parser = argparse.ArgumentParser(
        prog="usod",
        description="Unsupervised salient object detection. Training: usod fit|validate|test --config FILE",
    )
    parser.add_argument("--version", action="version", version=f"usod {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name in LIGHTNING_SUBCOMMANDS:
        top.add_parser(name, help=f"Lightning CLI: {name} a model (see `usod {name} --help`)", add_help=False)
    for path, (module, help_text) in COMMANDS.items():
        parent = top
        for part in path[:-1]:
            if part not in groups:
                groups[part] = top.add_parser(part, help=f"{part} commands").add_subparsers(
                    dest=f"{part}_command", metavar="SUBCOMMAND", required=True
                )
            parent = groups[part]
        # No help here: `usod CMD --help` reaches the command's own parser, which knows its options.
        sub = parent.add_parser(path[-1], help=help_text, add_help=False)
        sub.set_defaults(_module=module)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: printed as one line, not as a stack trace."""
    errors: list[type[BaseException]] = [FileNotFoundError, NotADirectoryError, FileExistsError]
    try:
        from usod.data.io import InvalidInputError, SettingsError
        from usod.labels.store import ManifestError

        errors += [InvalidInputError, SettingsError, ManifestError]
    except ImportError:  # pragma: no cover - io is part of the package
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    from usod.distributed import destroy_group_at_exit

    destroy_group_at_exit()  # a DDP process group (Lightning's too) is taken down cleanly at exit
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS and not _is_folder_predict(argv):
        return _run_reporting_user_errors(lambda: lightning_main(argv))
    if _is_folder_predict(argv):
        path: tuple[str, ...] = ("predict",)
        module_name, help_text = FOLDER_PREDICT
    else:
        # Two passes: find the command, then let its module add its own arguments.
        parser = build_parser()
        known, _ = parser.parse_known_args(argv)
        module_name = getattr(known, "_module", None)
        if module_name is None:
            parser.print_help()
            return 0 if not argv else 2
        path = next(p for p, (m, _) in COMMANDS.items() if m == module_name)
        help_text = COMMANDS[path][1]
    module = importlib.import_module(module_name)
    prog, rest = "usod " + " ".join(path), argv[len(path) :]
    if hasattr(module, "parse_args"):  # a command that parses its own options (jsonargparse)
        return _run_reporting_user_errors(lambda: module.run(module.parse_args(prog, rest)))
    sub = argparse.ArgumentParser(prog=prog, description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    return _run_reporting_user_errors(lambda: module.run(args))


#: File-system errors that are the machine's state, not a bug: reported in one line (exit status 2).
_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


def _disk_error(err: BaseException) -> str | None:
    """One line for a full, read-only or forbidden output location, else ``None``."""
    if not isinstance(err, OSError) or err.errno not in _DISK_ERRNOS:
        return None
    where = err.filename or ""
    advice = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space",
        errno.EROFS: "choose a writable folder",
    }.get(err.errno, "fix the permissions")
    return (
        f"{where}{': ' if where else ''}{err.strerror or err}. Finished outputs are kept: {advice} and run "
        "the same command again to resume"
    )


def _user_error_inside(err: BaseException) -> BaseException | None:
    """The first user error (or disk error) in ``err``'s chain of causes (``None`` when there is none)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, _user_errors()) or _disk_error(current) is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _run_reporting_user_errors(command: Callable[[], int | None]) -> int:
    """Run a command; errors in the user's input become one line on stderr and exit status 2."""
    try:
        return int(command() or 0)
    except _user_errors() as err:
        print(f"usod: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # jsonargparse and Lightning wrap what a class raised while being built (a bad weights file named
        # in a config): report the user's error inside, in one line, instead of the wrapper's traceback
        cause = _user_error_inside(err)
        if cause is None:
            raise
        print(f"usod: error: {_disk_error(cause) or cause}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `usod list | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
