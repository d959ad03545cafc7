"""``cvt list`` and ``cvt info``: the model zoo, parameters and multiply-accumulates."""

from __future__ import annotations

import argparse
import json

from . import UsageError, user_errors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list architectures and released checkpoints")
    p.add_argument("--pretrained", action="store_true", help="only released checkpoints")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_list)

    p = sub.add_parser("info", help="parameters, MACs (attention included) and feature shapes of a model")
    p.add_argument("name", help="architecture or checkpoint name (see `cvt list`), or a weight file / directory")
    p.add_argument(
        "--resolution",
        "-r",
        type=int,
        nargs="+",
        metavar="R",
        help="input size: R (square) or H W; default: the model's img_size",
    )
    p.add_argument("--num-classes", type=int, default=None, help="head size to count (default: the model's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_info)


def run_list(args: argparse.Namespace) -> int:
    from ..core.macs import count_macs, count_params
    from ..core.presets import ARCHITECTURES, CHECKPOINTS, get_config, list_models

    rows = []
    for name in list_models(pretrained=args.pretrained):
        cfg = get_config(name)
        ck = CHECKPOINTS.get(name)
        rows.append(
            {
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
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<17}{'arch':<10}{'res':>5}{'params':>9}{'GMACs':>8}  {'pretrain':<14}{'top1':>6}  weights")
    for r in rows:
        top1 = f"{r['top1']:.1f}" if r["top1"] else "-"
        print(
            f"{r['name']:<17}{r['arch']:<10}{r['resolution']:>5}{r['params_M']:>8.2f}M{r['GMACs']:>8.2f}  "
            f"{r['pretrain']:<14}{top1:>6}  {r['hf_repo']}"
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..core.macs import count_macs, count_params, stage_costs
    from ..factory import resolve

    with user_errors():
        cfg = resolve(weights=args.name)[0] if Path(args.name).exists() else resolve(args.name)[0]
        if args.num_classes is not None:
            cfg = cfg.replace(num_classes=args.num_classes)
        res = args.resolution or [cfg.img_size]
        if len(res) > 2:
            raise UsageError("--resolution takes R or H W")
        h, w = res[0], res[-1]
        try:
            stages = stage_costs(cfg, h, w)
            cfg.feature_shapes(h, w)
        except ValueError as e:
            raise UsageError(f"--resolution {h} {w}: {e}") from None
    params, macs = count_params(cfg), count_macs(cfg, h, w)
    info = {
        "name": cfg.name,
        "input": [3, h, w],
        "activation": cfg.activation,
        "num_classes": cfg.num_classes,
        "params": params,
        "macs": macs,
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
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{cfg.name}: input 3x{h}x{w}, {cfg.num_classes} classes, activation {cfg.activation}")
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
