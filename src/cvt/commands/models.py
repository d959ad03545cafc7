"""``cvt list`` and ``cvt info``: the model zoo, parameters and multiply-accumulates (framework-free)."""

from __future__ import annotations

from typing import Annotated, Any

from ..core import bounds
from ..core.config import CvTConfig
from ..core.errors import UsageError
from ..core.macs import count_macs, count_params, stage_costs
from ..core.presets import ARCHITECTURES, CHECKPOINTS, get_config, list_models, weight_source
from ..core.text import dumps_json, escape_controls
from ..core.weights import resolve, with_overrides
from ._signature import Arg


def run_list(*, pretrained: bool = False, as_json: Annotated[bool, Arg("--json")] = False) -> int:
    """Architectures and released checkpoints: resolution, parameters, GMACs, pretraining, top-1, weights.

    Args:
        pretrained: only released checkpoints
        as_json: machine-readable output
    """
    rows = [_zoo_row(name) for name in list_models(pretrained=pretrained)]
    if as_json:
        print(dumps_json(rows, indent=2))
        return 0
    print(f"{'name':<17}{'arch':<10}{'res':>5}{'params':>9}{'GMACs':>8}  {'pretrain':<14}{'top1':>6}  weights")
    for r in rows:
        top1 = f"{r['top1']:.1f}" if r["top1"] else "-"
        print(
            f"{r['name']:<17}{r['arch']:<10}{r['resolution']:>5}{r['params_M']:>8.2f}M{r['GMACs']:>8.2f}  "
            f"{r['pretrain']:<14}{top1:>6}  {r['hf_repo']}"
        )
    return 0


def _zoo_row(name: str) -> dict[str, Any]:
    cfg = get_config(name)
    ck = CHECKPOINTS.get(name)
    return {
        "name": name,
        "arch": ck.arch if ck else name,
        "resolution": cfg.img_size,
        "params_M": round(count_params(cfg) / 1e6, 2),
        "GMACs": round(count_macs(cfg) / 1e9, 2),
        "pretrain": ck.pretrain if ck else "-",
        "top1": ck.top1 if ck else None,
        "hf_repo": ck.hf_repo if ck else "-",
        "architecture_only": name in ARCHITECTURES and ck is None,
    }


def run_info(
    name: str | None = None,
    *,
    weights: Annotated[str | None, Arg(metavar="FILE|DIR")] = None,
    resolution: Annotated[list[int] | None, Arg("-r", metavar="R")] = None,
    num_classes: int | None = None,
    as_json: Annotated[bool, Arg("--json")] = False,
) -> int:
    """Parameters, MACs (attention matmuls included) and per-stage shapes of a model, and the activation it runs
    (the rule every verb uses: what a native file records, else quick_gelu for a released checkpoint name, else
    gelu for an HF directory, else quick_gelu).

    Args:
        name: architecture or checkpoint name (see `cvt list`), or a weight file / directory
        weights: weight file or directory: its architecture (or NAME's, loaded with these weights)
        resolution: input size: R (square) or H W; default: the model's img_size
        num_classes: head size to count (default: the model's)
        as_json: machine-readable output
    """
    for r in resolution or []:
        bounds.check_options(resolution=(r, bounds.RESOLUTION))
    bounds.check_options(num_classes=(num_classes, bounds.NUM_CLASSES))
    cfg = _config(name, weights, num_classes)
    res = resolution or [cfg.img_size]
    if len(res) > 2:
        raise UsageError("--resolution takes R or H W")
    info = _model_info(cfg, res[0], res[-1])
    if as_json:
        print(dumps_json(info, indent=2))
        return 0
    h, w = res[0], res[-1]
    params, macs = info["params"], info["macs"]
    # the name comes from the weight file's metadata: escaped, it cannot drive the terminal
    print(f"{escape_controls(cfg.name)}: input 3x{h}x{w}, {cfg.num_classes} classes, activation {cfg.activation}")
    print(f"  parameters : {params:,} ({params / 1e6:.2f} M, BatchNorm statistics excluded)")
    print(f"  MACs       : {macs / 1e9:.2f} G ({macs:,}; convolutions, linear layers and attention matmuls)")
    print(
        f"  {'stage':<6}{'C':>6}{'depth':>6}{'heads':>6}{'map':>10}{'kv map':>9}{'stride':>7}{'GMACs':>8}{'attn-mm':>9}"
    )
    for i, st in enumerate(info["stages"]):
        hw = "x".join(map(str, st["map"]))
        kv = "x".join(map(str, st["kv_map"]))
        print(
            f"  {i:<6}{st['channels']:>6}{st['depth']:>6}{st['heads']:>6}{hw:>10}{kv:>9}{st['stride']:>7}"
            f"{st['macs'] / 1e9:>8.3f}{st['attn_matmul_macs'] / 1e9:>9.3f}"
        )
    return 0


def _config(name: str | None, weights: str | None, num_classes: int | None) -> CvTConfig:
    """The architecture ``create_model(name, weights=weights, num_classes=...)`` builds (a released name never needs
    torch; a NAME that is an existing path is read as weights)."""
    if name is not None and weights is None:  # a NAME that is an existing path is weights (weight_source's rule)
        source = weight_source(name)
        name, weights = source.name, source.weights
    if weights is None:
        if name is None:
            raise UsageError("give a model name or --weights FILE|DIR")
        cfg = get_config(name)
        return cfg if num_classes is None else cfg.replace(num_classes=num_classes)
    config, spec, loaded = resolve(name, weights=weights)  # a .pth too: the core reads pickles without torch
    return with_overrides(config, spec, loaded, num_classes=num_classes)[0]


def _model_info(cfg: CvTConfig, h: int, w: int) -> dict[str, Any]:
    """What ``cvt info --json`` prints for ``cfg`` on an ``h x w`` input."""
    try:
        stages = stage_costs(cfg, h, w)
        cfg.feature_shapes(h, w)
    except ValueError as e:  # the core's geometry says why the input is too small
        raise UsageError(f"--resolution {h} {w}: {e}") from None
    return {
        "name": cfg.name,
        "input": [3, h, w],
        "activation": cfg.activation,
        "num_classes": cfg.num_classes,
        "params": count_params(cfg),
        "macs": count_macs(cfg, h, w),
        "stages": [
            {
                "channels": s.embed_dim,
                "depth": s.depth,
                "heads": s.num_heads,
                "map": list(c.map_hw),
                "kv_map": list(c.kv_hw),
                "tokens_q": c.tokens_q,
                "tokens_kv": c.tokens_kv,
                "stride": red,
                "macs": c.macs,
                "attn_matmul_macs": c.attn_matmul_macs,
            }
            for s, c, red in zip(cfg.stages, stages, cfg.reductions)
        ],
    }
