"""``v2x train codebook`` and ``v2x eval comm``."""

from __future__ import annotations

from pathlib import Path

import click

from v2x.cli.options import (
    bootstrap_options,
    box_merge_option,
    comma_list,
    frames_option,
    message_weights_option,
    pick_option,
    share_frame_option,
)
from v2x.pipeline.methods import comm_method_names, feature_method_names, get_method


def _split(data: Path, name: str) -> Path:
    return data / name if (data / name).is_dir() else data


@click.command("codebook")
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Log root (its train/ split is used when present); features come from the frozen detector.",
)
@click.option(
    "--features",
    "features_path",
    type=click.Path(exists=True, path_type=Path),
    help="Instead of --data: a .pt file or directory of them holding (C, H, W) / (B, C, H, W) maps "
    "or {'features', 'occupied'} dicts.",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Codebook file (.pt)."
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Frozen detector for --data (default: shipped).",
)
@click.option("--m", "m", type=int, default=2, show_default=True, help="Product sub-codebooks.")
@click.option("--r", "r", type=int, default=2, show_default=True, help="Residual stages.")
@click.option("--k", "k", type=int, default=64, show_default=True, help="Codewords per sub-codebook.")
@frames_option(default=300)
@pick_option
@click.option("--cells-per-map", type=int, default=1000, show_default=True, help="Cells sampled per map.")
@click.option("--iters", type=int, default=25, show_default=True, help="k-means iterations per sub-codebook.")
@click.option("--refine-steps", type=int, default=0, show_default=True, help="Gradient steps after k-means.")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--holdout-every", type=int, default=10, show_default=True, help="Every n-th map is held out.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_codebook(
    data,
    features_path,
    out,
    weights,
    m,
    r,
    k,
    frames,
    pick,
    cells_per_map,
    iters,
    refine_steps,
    lr,
    holdout_every,
    seed,
) -> None:
    """Fit a residual product codebook to BEV cell features (frozen detector's, or saved tensors)."""
    import json

    import torch

    from v2x.messages.codebook import CodebookConfig, fit_from_maps, load_feature_maps

    if (data is None) == (features_path is None):
        raise click.UsageError("give exactly one of --data (a log) or --features (saved feature maps)")
    torch.set_num_threads(2)
    fit_args = dict(
        cells_per_map=cells_per_map,
        holdout_every=holdout_every,
        iters=iters,
        refine_steps=refine_steps,
        lr=lr,
        seed=seed,
        progress=True,
    )
    extra = {}
    if features_path is not None:
        first = next(load_feature_maps(features_path))[0]
        cfg = CodebookConfig(channels=first.shape[0], m=m, r=r, k=k)
        cb, info = fit_from_maps(cfg, load_feature_maps(features_path), **fit_args)
        source = f"--features {features_path}"
    else:
        from v2x.datasets import open_log
        from v2x.experiments.comm_eval import encoder_maps
        from v2x.perception.cooperative import Perception
        from v2x.perception.detector import load_detector
        from v2x.pipeline.frames import FrameSelection

        model = load_detector(weights)
        cfg = CodebookConfig(channels=model.cfg.bev_channels, m=m, r=r, k=k)
        picked = FrameSelection(frames, pick, seed)
        maps = encoder_maps(open_log(_split(data, "train")), Perception(model), picked)
        cb, info = fit_from_maps(cfg, maps, **fit_args)
        extra["detector"] = model.identity()
        source = f"--data {data} --frames {frames} --pick {pick}"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = (
        f"v2x train codebook {source} --m {m} --r {r} --k {k} --cells-per-map {cells_per_map} "
        f"--iters {iters} --refine-steps {refine_steps} --seed {seed}"
    )
    cb.save(out, info=json.dumps(info), command=command, **extra)
    click.echo(
        json.dumps(
            {
                "codebook": str(out),
                "identity": f"{cb.identity():#010x}",
                "bits_per_cell": cfg.bits_per_cell,
                **info,
            },
            indent=2,
        )
    )


@click.command("comm")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Log root (its test/ split is used when present).",
)
@click.option(
    "--methods",
    default=",".join(feature_method_names()),
    show_default=True,
    help=f"Comma-separated, of {', '.join(comm_method_names())} (late: boxes alone, only when named).",
)
@click.option(
    "--budgets",
    default=",".join(str(b) for b in (256, 512, 1024, 2048, 4096, 16384, 65536)),
    show_default=True,
    help="Bytes per agent per frame, comma-separated.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Detector (default: shipped).",
)
@click.option(
    "--codebook",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Codebook (default: shipped); naming one decodes with the detector's own head.",
)
@message_weights_option
@click.option(
    "--hybrid-box-score",
    default=None,
    help="The hybrid's split, comma-separated cuts to compare: boxes scoring at least this go as "
    "boxes, the rest as codes (rows' threshold) [default: the shipped cut].",
)
@click.option(
    "--thresholds",
    default=None,
    help="Where2comm's confidence thresholds, comma-separated [default: 0.05,0.1,0.2,0.3,0.5,0.7].",
)
@frames_option()
@pick_option
@share_frame_option
@box_merge_option
@bootstrap_options(
    "With late among the methods: each other row's AP difference from late fusion at the "
    "same budget, with a 95 % interval over this many paired resamples (JSON key vs_late)."
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path))
def eval_comm(
    data,
    methods,
    budgets,
    weights,
    codebook,
    message_weights,
    hybrid_box_score,
    thresholds,
    frames,
    pick,
    share_frame,
    box_merge,
    bootstrap,
    bootstrap_block,
    json_out,
    plot_out,
) -> None:
    """AP@0.5/0.7 against bytes per agent per frame, one curve per method."""
    from v2x.datasets import open_log
    from v2x.experiments.comm_eval import evaluate_comm, plot_comm, settings_for, write_rows
    from v2x.messages.codebook import load_codebook
    from v2x.messages.codec import MessageCodec
    from v2x.messages.message_weights import load_message_weights, message_weights_path
    from v2x.messages.pairing import resolve_codebook, warn_if_mispaired
    from v2x.perception.cooperative import Perception
    from v2x.perception.detector import load_detector, resolve_weights
    from v2x.perception.settings import box_fusion_iou, resolve_share_frame
    from v2x.pipeline.frames import FrameSelection

    names = [m.strip() for m in methods.split(",") if m.strip()]
    known = comm_method_names()
    bad = [m for m in names if m not in known]
    if bad:
        raise click.BadParameter(f"unknown method(s) {bad}: use {', '.join(known)}")
    try:
        budget_list = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"budgets must be integers (bytes): {exc}") from exc
    try:
        cuts = comma_list(hybrid_box_score, float)
        levels = comma_list(thresholds, float)
    except ValueError as exc:
        raise click.BadParameter(f"--hybrid-box-score and --thresholds take numbers: {exc}") from exc
    log = open_log(_split(data, "test"))
    model = load_detector(weights, log_format=getattr(log, "format", None))
    detector_path = resolve_weights(weights, getattr(log, "format", None))
    try:
        mw_path = message_weights_path(message_weights, codebook, detector_path)
        mw = load_message_weights(mw_path, model) if mw_path is not None else None
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if mw is not None:
        click.echo(f"message weights {mw_path} (identity {mw.identity_hex()})", err=True)
        codec = MessageCodec(model.cfg.grid, mw.codebook, codebook_id=mw.identity())
    else:
        cb_path = resolve_codebook(codebook, detector_path)
        cb = load_codebook(cb_path) if Path(cb_path).is_file() else None
        if cb is not None:
            warn_if_mispaired(cb_path, model.identity())
        if cb is None and any(get_method(m).needs_codebook for m in names):
            raise click.ClickException(
                f"no codebook at {cb_path}: train one with `v2x train codebook` or pass --codebook"
            )
        codec = MessageCodec(model.cfg.grid, cb)
    rows = evaluate_comm(
        log,
        Perception(model, box_fusion_iou=box_fusion_iou(box_merge)),
        codec,
        settings_for(names, budget_list, hybrid_cuts=cuts, thresholds=levels),
        FrameSelection(frames, pick),
        share_frame=resolve_share_frame(share_frame, getattr(log, "format", None)),
        bootstrap=bootstrap,
        bootstrap_block=bootstrap_block,
        decoder=mw.decoder if mw is not None else None,
    )
    if bootstrap and not any(get_method(m).features is None for m in names):
        click.echo("--bootstrap compares with late fusion: add late to --methods", err=True)
    for r in rows:
        r["box_merge"] = box_merge
    write_rows(rows, json_out)
    for r in rows:
        ap = r["ap_bev"]
        label = (
            r["budget_bytes"]
            if r["budget_bytes"] is not None
            else (f"thr {r['threshold']}" if r["threshold"] is not None else "all")
        )
        if r["budget_bytes"] is not None and r["threshold"] is not None:
            label = f"{label} cut {r['threshold']}"
        line = f"{r['method']:>16} {label!s:>10}: {r['bytes_mean']:>10.0f} B/agent/frame  AP@0.5 {ap['0.5']}  AP@0.7 {ap['0.7']}"
        if "ap_bev_boxes_only" in r:
            alone = r["ap_bev_boxes_only"]
            line += f"  (codes {r['code_bytes_mean']:.0f} B; boxes alone AP@0.5 {alone['0.5']}  AP@0.7 {alone['0.7']})"
        if "vs_late" in r:
            d = r["vs_late"]["ap_bev"]
            line += "  vs late " + "  ".join(
                f"@{t} {d[t]['difference']:+.3f} [{d[t]['low']:+.3f}, {d[t]['high']:+.3f}]"
                for t in ("0.5", "0.7")
            )
        click.echo(line)
    if plot_out:
        plot_comm(rows, plot_out)
        click.echo(f"wrote {plot_out}")
