"""``v2x track``, ``v2x eval tracking`` and ``v2x train tracker``."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("track")
@click.option(
    "--detections",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of AB3DMOT per-sequence detection files (NNNN.txt).",
)
@click.option("--tracker", type=click.Choice(["ab3dmot", "dmstrack"]), default="ab3dmot", show_default=True)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Noise model for dmstrack (from `v2x train tracker`); fixed noise without it.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="KITTI-tracking results folder.",
)
@click.option(
    "--order",
    type=click.Choice(["xzy", "xyz"]),
    default="xzy",
    show_default=True,
    help="Column order of the 3D centre in the files (V2V4Real writes x, z, y).",
)
def track(detections, tracker, weights, out, order) -> None:
    """Track other people's detections and write KITTI-tracking text."""
    from v2x.tracking.sequences import track_dir

    written = track_dir(detections, out, tracker, weights, order)
    click.echo(f"wrote {len(written)} sequence(s) to {out}")


@click.command("tracking")
@click.option(
    "--gt",
    "gt_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Ground truth folder (KITTI-tracking text, NNNN.txt).",
)
@click.option(
    "--tracks",
    "tracks_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Tracker results folder (KITTI-tracking text).",
)
@click.option(
    "--seqmap",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Sequences and frame counts.",
)
@click.option("--order", type=click.Choice(["xzy", "xyz"]), default="xzy", show_default=True)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Instead of files: track a log with the detector and compare the four configurations.",
)
@click.option(
    "--detector",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Detector weights (--data).",
)
@click.option(
    "--noise",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Noise model (--data; default: the shipped one if present).",
)
@click.option(
    "--cache", type=click.Path(file_okay=False, path_type=Path), help="Where detections are cached (--data)."
)
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the results here."
)
def eval_tracking(gt_dir, tracks_dir, seqmap, order, data, detector, noise, cache, json_out) -> None:
    """AMOTA, AMOTP, sAMOTA, MOTA, MOTP, MT, ML, IDS in percent: comparable (reference) and strict."""
    if data is not None:
        _compare(data, detector, noise, cache, json_out)
        return
    if gt_dir is None or tracks_dir is None:
        raise click.UsageError("give --gt and --tracks (or --data to track a log)")
    from v2x.tracking.sequences import evaluate_dirs

    results = {
        mode: evaluate_dirs(gt_dir, tracks_dir, seqmap, mode, order) for mode in ("comparable", "strict")
    }
    payload = dict(results["comparable"])
    payload["strict"] = results["strict"]
    for mode, r in results.items():
        click.echo(
            f"{mode:>10}: AMOTA {r['amota']:.2f}  sAMOTA {r['samota']:.2f}  AMOTP {r['amotp']:.2f}  MOTA {r['mota']:.2f}  "
            f"MOTP {r['motp']:.2f}  MT {r['mt']:.2f}  ML {r['ml']:.2f}  IDS {r['ids']}  FRAG {r['frag']}  FP {r['fp']}"
        )
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(payload, indent=2, default=float))


def _compare(data: Path, detector, noise, cache, json_out) -> None:
    from v2x.cooperative import Perception
    from v2x.datasets import open_log
    from v2x.detector import load_detector
    from v2x.tracking.train import load_noise_model
    from v2x.tracking_experiment import DEFAULT_NOISE, compare_trackers, extract_sequences, write_table

    root = data / "test" if (data / "test").is_dir() else data
    log = open_log(root)
    cache = cache or Path(json_out or "tracking").with_suffix("") / "detections"
    paths = extract_sequences(log, Perception(load_detector(detector)), cache)
    noise_path = noise or (DEFAULT_NOISE if DEFAULT_NOISE.is_file() else None)
    results = compare_trackers(paths, load_noise_model(noise_path) if noise_path else None)
    table = write_table(results, Path(json_out or "tracking.json").with_suffix(".md"))
    click.echo(table)


@click.command("tracker")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Log root with train/ and validate/ splits of 10 Hz sequences (e.g. `v2x sim generate --preset track`).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--detector",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Detector weights (default: shipped).",
)
@click.option("--epochs", type=int, default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--features/--no-features",
    default=True,
    show_default=True,
    help="Feed BEV feature patches to the noise net.",
)
def train_tracker(data, out, detector, epochs, seed, features) -> None:
    """Train the measurement-noise network through the multi-sensor filter (10-frame windows)."""
    from v2x.cooperative import Perception
    from v2x.datasets import open_log
    from v2x.detector import load_detector
    from v2x.tracking.train import NoiseTrainConfig, train_noise_model
    from v2x.tracking_experiment import extract_sequences, load_with_extra

    model = load_detector(detector)
    perception = Perception(model)
    splits = {}
    for split in ("train", "validate"):
        root = data / split
        if not root.is_dir():
            raise click.ClickException(f"{data} has no {split}/ split")
        paths = extract_sequences(open_log(root), perception, out / "detections" / split)
        splits[split] = [load_with_extra(p) for p in paths]
    if not features:
        for seqs in splits.values():
            for seq in seqs:
                for f in seq:
                    for a in f.agents:
                        a.features = None
    cfg = NoiseTrainConfig(
        epochs=epochs, seed=seed, feature_channels=model.cfg.bev_channels if features else 0
    )
    summary = train_noise_model(splits["train"], splits["validate"], out, cfg)
    click.echo(
        json.dumps(
            {k: summary[k] for k in ("best_val_loss", "fixed_val_loss", "windows", "parameters", "seconds")},
            indent=2,
        )
    )
