"""``cvt train``: run a training recipe (the embedded digits default without --config)."""

from __future__ import annotations

import argparse

from . import UserError, user_errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a CvT from a recipe (default: a small CvT on scikit-learn's digits)",
        description="Train from a YAML recipe (see configs/). Without --config: the embedded default, a small "
        "CvT on scikit-learn's 8x8 digits. Under torchrun (torchrun --nproc_per_node N -m cvt train ...) each "
        "process trains on its share of every global batch (DDP); rank 0 writes the run directory.",
    )
    p.add_argument("--config", "-c", metavar="RECIPE.yaml", help="recipe file (default: the digits recipe)")
    p.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="override recipe values, e.g. --set optim.lr=1e-3 schedule.epochs=10 (values are YAML)",
    )
    p.add_argument("--out", "-o", metavar="DIR", help="run directory (default: run.out, else runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start again in a --out that already holds a run")
    p.add_argument("--no-progress", action="store_true", help="no per-epoch progress bar")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipe and the data, print the resolved recipe, train nothing",
    )
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from ..data.datasets import DataError
    from ..train import TrainError, TrainingDiverged, fit, load_config
    from ..train.checkpoint import CheckpointError

    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("run.progress=false")
    with user_errors():
        try:
            if args.dry_run:
                return _dry_run(args, overrides, load_config)
            fit(args.config, overrides=overrides, out=args.out, resume=args.resume, overwrite=args.overwrite)
        except (DataError, TrainError, TrainingDiverged, CheckpointError) as e:
            raise UserError(str(e)) from None
    return 0


def _dry_run(args: argparse.Namespace, overrides: list[str], load_config) -> int:
    from ..data.datasets import build_sources
    from ..train.config import default_out_dir, validate

    cfg = load_config(args.config, overrides)
    if args.out:
        cfg.run.out = args.out
    cfg.run.out = str(default_out_dir(cfg, args.config))
    validate(cfg, check_paths=True)
    d = cfg.data
    b = build_sources(d.kind, root=d.root, train_list=d.train, val_list=d.val, val_fraction=d.val_fraction,
                      split_seed=d.split_seed, max_train=d.max_train_samples, max_val=d.max_val_samples)  # fmt: skip
    mcfg = cfg.resolve_model_config(len(b.classes))
    print(cfg.to_yaml(), end="")
    print(f"# ok: {mcfg.name}, {len(b.train)} training / {len(b.val)} validation images, {len(b.classes)} classes")
    return 0
