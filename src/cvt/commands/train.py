"""``cvt train``: run a training recipe (the embedded digits default without --config)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from .. import train
from ._signature import Arg


def run_train(
    *,
    config: Annotated[str | None, Arg("-c", metavar="RECIPE.yaml")] = None,
    overrides: Annotated[Sequence[str], Arg("--set", metavar="KEY=VALUE", repeat=True)] = (),
    out: Annotated[str | None, Arg("-o", metavar="DIR")] = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    dry_run: bool = False,
) -> int:
    """Train from a YAML recipe (see configs/). Without --config: the embedded default, a small CvT on
    scikit-learn's 8x8 digits. Under torchrun (torchrun --nproc_per_node N -m cvt train ...) each process trains
    on its share of every global batch (DDP); rank 0 writes the run directory.

    Args:
        config: recipe file (default: the digits recipe)
        overrides: override recipe values, e.g. --set optim.lr=1e-3 schedule.epochs=10 (values are YAML)
        out: run directory (default: run.out, else runs/<recipe name>)
        resume: continue the run in --out from its last checkpoint (none yet: start it afresh)
        overwrite: start again in a --out that already holds a run (its files are removed first)
        progress: per-epoch progress bar
        dry_run: make every check a real start makes (recipe, --out, data, model and weights), print the
            resolved recipe, write nothing
    """
    overrides = [*overrides, *([] if progress else ["run.progress=false"])]
    if dry_run:
        print(train.dry_run(config, overrides=overrides, out=out, resume=resume, overwrite=overwrite).rstrip("\n"))
        return 0
    train.fit(config, overrides=overrides, out=out, resume=resume, overwrite=overwrite)
    return 0
