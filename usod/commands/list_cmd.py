"""``usod list {datasets,datamodules,models}``: print the registries."""

from __future__ import annotations

import argparse

WHATS = ("datasets", "datamodules", "models")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=WHATS, nargs="?", default="datasets", help="which registry to print")
    parser.add_argument(
        "--layouts",
        action="store_true",
        help="also print every other folder layout each dataset accepts (image folder + mask folders)",
    )


def _print_datasets(show_layouts: bool) -> None:
    from usod.data.datasets import DATASETS, list_datasets

    rows = list_datasets()
    width = max(len(name) for name, _, _ in rows)
    print(f"{'name':<{width}}  modality  layout")
    for name, modality, layout in rows:
        lines = layout.strip().splitlines()
        first = lines[0] if lines else ""
        print(f"{name:<{width}}  {modality:<8}  {first}")
        if show_layouts:
            pad = f"{'':<{width}}  {'':<8}  "
            for line in lines[1:]:
                print(pad + line)
            accepted = [v.describe() for v in getattr(DATASETS[name], "variants", ())]
            for described in dict.fromkeys(accepted):  # in order, without repeats
                print(f"{pad}or {described}")


def _print_registry(registry: dict[str, type], with_doc: bool) -> None:
    width = max(len(name) for name in registry)
    for name, cls in registry.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = f"  {doc[0]}" if with_doc and doc else ""
        print(f"{name:<{width}}  {cls.__module__}.{cls.__qualname__}{summary}")


def run(args: argparse.Namespace) -> int:
    if args.what == "datasets":
        _print_datasets(args.layouts)
    elif args.what == "datamodules":
        from usod.data.datamodules import DATAMODULES

        _print_registry(DATAMODULES, with_doc=False)
    else:
        from usod.models.registry import model_classes

        _print_registry(model_classes(), with_doc=True)
    return 0
