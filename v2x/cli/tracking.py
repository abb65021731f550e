"""``v2x track``, ``v2x eval tracking`` and ``v2x train tracker``."""

from __future__ import annotations

import json
from pathlib import Path

import click

_ORDER = click.option(
    "--order",
    type=click.Choice(["xzy", "xyz"]),
    default="xzy",
    show_default=True,
    help="Column order of the 3D centre in text files (V2V4Real writes x, z, y).",
)


def _tracker_setup(weights: Path | None, config: Path | None, gate: float | None):
    from v2x.tracking.config import TrackerConfig
    from v2x.tracking.train import load_tracker

    cfg, noise = load_tracker(weights) if weights else (None, None)
    if config:
        cfg = TrackerConfig.load(config)
    cfg = cfg or TrackerConfig()
    if gate is not None:
        cfg = cfg.with_(mahalanobis_gate=gate)
    return cfg, noise


@click.command("track")
@click.option(
    "--detections",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of AB3DMOT detection files (NNNN.txt) or multi-agent records (*.npz).",
)
@click.option(
    "--tracker",
    type=click.Choice(["ab3dmot", "ab3dmot-ego", "dmstrack"]),
    default="ab3dmot",
    show_default=True,
    help="ab3dmot: every box as one stream; ab3dmot-ego: the ego's boxes only; dmstrack: agent by agent.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Noise model from `v2x train tracker` (dmstrack; it carries its fitted noise prior).",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Tracker settings (JSON, TrackerConfig fields); default AB3DMOT's.",
)
@click.option("--gate", type=float, help="Mahalanobis gate (squared distance, e.g. 18.48 = 99 %, 7 dof).")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for KITTI-tracking results, one file per sequence.",
)
@click.option(
    "--seqmap",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Sequence lengths (text detections).",
)
@_ORDER
def track(detections, tracker, weights, config, gate, out, seqmap, order) -> None:
    """Track detections (other people's or ours) and write KITTI-tracking text."""
    from v2x.experiments.tracking_files import track_dir

    cfg, noise = _tracker_setup(weights, config, gate)
    written = track_dir(
        detections, out, tracker, cfg, noise if tracker == "dmstrack" else None, order, seqmap
    )
    click.echo(f"wrote {len(written)} sequence(s) to {out}")


def _line(name: str, r: dict) -> str:
    return (
        f"{name:>10}: AMOTA {r['amota']:6.2f}  sAMOTA {r['samota']:6.2f}  AMOTP {r['amotp']:6.2f}  "
        f"MOTA {r['mota']:6.2f}  MOTP {r['motp']:6.2f}  MT {r['mt']:6.2f}  ML {r['ml']:6.2f}  "
        f"IDS {r['ids']}  FRAG {r['frag']}  FP {r['fp']}  FN {r['fn']}"
    )


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
    help="Sequences and frame counts (`name empty first last`); default: every ground-truth file.",
)
@_ORDER
@click.option(
    "--records",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Instead of text files: compare the trackers on multi-agent detection records (*.npz).",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Noise model for --records (carries the fitted prior the fixed-noise filter uses).",
)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Instead of files: track a log with the detector, compare the four trackers and the perfect one.",
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
def eval_tracking(
    gt_dir, tracks_dir, seqmap, order, records, weights, data, detector, noise, cache, json_out
) -> None:
    """AMOTA, AMOTP, sAMOTA, MOTA, MOTP, MT, ML, IDS, FRAG in percent, comparable and strict.

    comparable: AB3DMOT's evaluator as V2V4Real runs it (unmatched tracks with a 2D box of at
    most 25 px are ignored, so with all-zero 2D boxes no false positive counts); these sit
    beside the papers' numbers. strict: every unmatched track is a false positive.
    """
    if data is not None:
        _compare(data, detector, noise, cache, json_out)
        return
    if records is not None:
        _compare_records(records, weights, json_out)
        return
    if gt_dir is None or tracks_dir is None:
        raise click.UsageError("give --gt and --tracks (or --data to track a log)")
    from v2x.experiments.tracking_files import evaluate_dirs

    result = evaluate_dirs(gt_dir, tracks_dir, seqmap, order)
    click.echo(_line("comparable", result))
    click.echo(_line("strict", result["strict"]))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2, default=float))


def _compare(data: Path, detector, noise, cache, json_out) -> None:
    from v2x.datasets import open_log
    from v2x.experiments.tracking import DEFAULT_NOISE, compare_trackers, extract_sequences, write_table
    from v2x.perception.cooperative import Perception
    from v2x.perception.detector import load_detector
    from v2x.tracking.train import load_tracker

    root = data / "test" if (data / "test").is_dir() else data
    log = open_log(root)
    cache = cache or Path(json_out or "tracking").with_suffix("") / "detections"
    paths = extract_sequences(log, Perception(load_detector(detector)), cache)
    noise_path = noise or (DEFAULT_NOISE if DEFAULT_NOISE.is_file() else None)
    tracker_cfg, noise_net = load_tracker(noise_path) if noise_path else (None, None)
    results = compare_trackers(paths, noise_net, tracker_cfg=tracker_cfg)
    table = write_table(results, Path(json_out or "tracking.json").with_suffix(".md"))
    click.echo(table)


def _message_bytes(n: int, variances: bool) -> int:
    """Exact size of a detections-only message on the wire (header included)."""
    import numpy as np

    from v2x.comm.wire import MessageType, encoded_size

    return encoded_size(
        MessageType.DETECTIONS, (1, 1), np.zeros(0, np.int64), detections=n, variances=variances
    )


def _compare_records(records: Path, weights: Path | None, json_out: Path | None) -> None:
    from v2x.tracking.compare import compare, markdown_table
    from v2x.tracking.records import load_sequence, record_files
    from v2x.tracking.train import load_tracker

    paths = record_files(records)
    if not paths:
        raise click.ClickException(f"no detection records (*.npz) in {records}")
    prior, noise = load_tracker(weights) if weights else (None, None)
    seqs = [(p.stem, load_sequence(p)) for p in paths]
    results = compare(seqs, prior, noise, _message_bytes)
    click.echo(markdown_table(results, json_out.with_suffix(".md") if json_out else None))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(results, indent=2, default=float))


def _npz_split(root: Path, split: str) -> list[Path]:
    from v2x.tracking.records import record_files

    return record_files(root / split) if (root / split).is_dir() else []


def _synthesise(log_root: Path, out: Path, seed: int, patch_channels: int) -> list[Path]:
    """Synthetic detections from a log's ground truth, one npz per scenario (cached)."""
    from tqdm import tqdm

    from v2x.datasets import open_log
    from v2x.tracking.records import save_sequence
    from v2x.tracking.synth import DetectionSynthesizer, frames_from_log

    log = open_log(log_root)
    paths = []
    for k, scenario in enumerate(log.scenarios()):
        target = out / f"{scenario.replace('/', '__')}.npz"
        paths.append(target)
        if target.is_file():
            continue
        frames = [log[i] for i in tqdm(log.scenario_indices(scenario), desc=f"read {scenario}", leave=False)]
        synth = DetectionSynthesizer(seed * 1000 + k, patch_channels=patch_channels)
        save_sequence(target, frames_from_log(frames, synth))
    return paths


@click.command("tracker")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="train/ and validate/ folders of detection records (*.npz), or a log root with those splits.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--synthetic",
    is_flag=True,
    help="The data is a log: synthesise detections from its ground truth (cached under OUT/detections).",
)
@click.option(
    "--detector",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The data is a log: run this detector on it (cached under OUT/detections).",
)
@click.option("--epochs", type=int, default=8, show_default=True)
@click.option("--window", type=int, default=10, show_default=True, help="Frames per back-propagation window.")
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--features/--no-features",
    default=True,
    show_default=True,
    help="Feed the BEV feature patches (when the records have them) to the noise net.",
)
def train_tracker(data, out, synthetic, detector, epochs, window, lr, seed, features) -> None:
    """Fit the fixed noise prior, then train the measurement-noise network through the
    multi-sensor filter (10-frame windows, box error after the update)."""
    import torch

    from v2x.tracking.records import load_sequence
    from v2x.tracking.train import NoiseTrainConfig, train_noise_model

    torch.set_num_threads(1)
    splits: dict[str, list[Path]] = {}
    for split in ("train", "validate"):
        paths = _npz_split(data, split)
        if not paths:
            if not (data / split).is_dir():
                raise click.ClickException(f"{data} has no {split}/ folder")
            if synthetic:
                paths = _synthesise(data / split, out / "detections" / split, seed + (split == "validate"), 0)
            elif detector is not None:
                paths = _detect(data / split, out / "detections" / split, detector)
            else:
                raise click.ClickException(
                    f"{data / split} holds no *.npz detection records; give --synthetic or --detector for a log"
                )
        splits[split] = paths
    seqs = {k: [load_sequence(p) for p in v] for k, v in splits.items()}
    channels = 0
    if features:
        shapes = {
            a.features.shape[1:] for s in seqs["train"] for f in s for a in f.agents if a.features is not None
        }
        if len(shapes) > 1:
            raise click.ClickException(
                f"feature patches of several shapes in the training data: {sorted(shapes)}"
            )
        if shapes:
            c, p, _ = next(iter(shapes))
            channels = c
    else:
        for s in (*seqs["train"], *seqs["validate"]):
            for f in s:
                for a in f.agents:
                    a.features = None
    cfg = NoiseTrainConfig(epochs=epochs, window=window, lr=lr, seed=seed, feature_channels=channels)
    if channels:
        cfg.patch = int(p)
    summary = train_noise_model(seqs["train"], seqs["validate"], out, cfg)
    click.echo(
        json.dumps(
            {
                k: summary[k]
                for k in ("best_val_loss", "fixed_val_loss", "sequences", "frames", "parameters", "seconds")
            },
            indent=2,
        )
    )


def _detect(log_root: Path, out: Path, detector: Path) -> list[Path]:
    """Per-agent detections with feature patches from the project's detector (cached)."""
    from v2x.datasets import open_log
    from v2x.experiments.tracking import extract_sequences
    from v2x.perception.cooperative import Perception
    from v2x.perception.detector import load_detector

    return extract_sequences(
        open_log(log_root), Perception(load_detector(detector)), out, with_intermediate=False
    )
