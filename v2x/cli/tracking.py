"""``v2x track``, ``v2x eval tracking`` and ``v2x train tracker``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

_ORDER = click.option(
    "--order",
    type=click.Choice(["xzy", "xyz"]),
    default="xzy",
    show_default=True,
    help="Column order of the 3D centre in text files (V2V4Real writes x, z, y).",
)


#: how many bad lines a command lists before it only counts them
_SHOWN_PROBLEMS = 20


def _report(problems: list) -> None:
    """Bad input that was skipped, one line each (the first few), on stderr."""
    for p in problems[:_SHOWN_PROBLEMS]:
        click.echo(f"warning: {p} (skipped)", err=True)
    if len(problems) > _SHOWN_PROBLEMS:
        click.echo(f"warning: {len(problems) - _SHOWN_PROBLEMS} more bad line(s) skipped", err=True)


def _one_line(exc: Exception) -> click.ClickException:
    """A file error as the command's one-line error, no traceback."""
    return click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _tracker_setup(weights: Path | None, config: Path | None, gate: float | None, fixed: bool = False):
    from v2x.tracking.config import TrackerConfig
    from v2x.tracking.train import load_tracker

    try:
        cfg, noise = load_tracker(weights, fixed=fixed) if weights else (None, None)
        if config:
            cfg = TrackerConfig.load(config)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise _one_line(exc) from exc
    cfg = cfg or TrackerConfig()
    if gate is not None:
        cfg = cfg.with_(mahalanobis_gate=gate)
    return cfg, noise


@click.command("track")
@click.option(
    "--detections",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of AB3DMOT detection files (NNNN.txt), of per-agent subfolders of them "
    "(ego/, 1/, ...: V2V4Real's layout, ego first), or of multi-agent records (*.npz).",
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
    "--fixed-noise",
    is_flag=True,
    help="With --weights: the filter with the weights' fitted prior (and the settings tuned for it) "
    "instead of the learned noise.",
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
def track(detections, tracker, weights, fixed_noise, config, gate, out, seqmap, order) -> None:
    """Track detections (other people's or ours) and write KITTI-tracking text."""
    from v2x.datasets.errors import DatasetError
    from v2x.experiments.tracking_files import track_dir
    from v2x.tracking.records import RecordError

    if fixed_noise and weights is None:
        raise click.UsageError("--fixed-noise takes the prior from --weights: give both")
    cfg, noise = _tracker_setup(weights, config, gate, fixed=fixed_noise)
    problems: list = []
    try:
        written = track_dir(
            detections, out, tracker, cfg, noise if tracker == "dmstrack" else None, order, seqmap, problems
        )
    except (DatasetError, RecordError, FileNotFoundError) as exc:
        raise _one_line(exc) from exc
    _report(problems)
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
    "--detections",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Instead of --tracks: compare the trackers on per-agent detections (ego/, 1/, ...) "
    "against --gt, with --weights.",
)
@click.option(
    "--sequences",
    help="With --detections: comma-separated sequences to compare on (default: all).",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Noise model for --records / --detections (carries the fitted prior the fixed-noise "
    "filter uses, and the settings tuned for each).",
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
    gt_dir,
    tracks_dir,
    seqmap,
    order,
    records,
    detections,
    sequences,
    weights,
    data,
    detector,
    noise,
    cache,
    json_out,
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
    if detections is not None:
        if gt_dir is None or weights is None:
            raise click.UsageError("--detections compares against --gt with the noise model of --weights")
        names = [v.strip() for v in sequences.split(",") if v.strip()] if sequences else None
        _compare_agents(detections, gt_dir, weights, seqmap, order, names, json_out)
        return
    if gt_dir is None or tracks_dir is None:
        raise click.UsageError("give --gt and --tracks (or --data to track a log)")
    from v2x.datasets.errors import DatasetError
    from v2x.experiments.tracking_files import evaluate_dirs

    problems: list = []
    try:
        result = evaluate_dirs(gt_dir, tracks_dir, seqmap, order, problems)
    except (DatasetError, FileNotFoundError) as exc:
        raise _one_line(exc) from exc
    _report(problems)
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


#: the rows of the per-agent comparison (see ``v2x.tracking.compare``)
_AGENT_ROWS = (
    "ab3dmot-ego",
    "ab3dmot/late",
    "dmstrack/fixed",
    "dmstrack/learned",
    "oracle/ground-truth-ids",
    "perfect/ground-truth",
)


def _compare_agents(detections, gt_dir, weights, seqmap, order, names, json_out) -> None:
    """The comparison table on per-agent detections: every row on the same inputs."""
    from v2x.datasets.errors import DatasetError
    from v2x.experiments.tracker_training import labelled_agent_sequences
    from v2x.experiments.tracking_files import seqmap_lengths
    from v2x.tracking.compare import compare, markdown_table
    from v2x.tracking.tune import EVERYWHERE

    learned_cfg, net = _tracker_setup(weights, None, None)
    fixed_cfg, _ = _tracker_setup(weights, None, None, fixed=True)
    problems: list = []
    try:
        seqs = labelled_agent_sequences(detections, gt_dir, order, seqmap_lengths(seqmap), problems, names)
    except (DatasetError, FileNotFoundError) as exc:
        raise _one_line(exc) from exc
    _report(problems)
    results = compare(seqs, learned_cfg, net, _message_bytes, _AGENT_ROWS, EVERYWHERE, fixed=fixed_cfg)
    click.echo(markdown_table(results, json_out.with_suffix(".md") if json_out else None))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        results["sequences"] = [n for n, _ in seqs]
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
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="train/ and validate/ folders of detection records (*.npz), or a log root with those splits.",
)
@click.option(
    "--detections",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Instead of --data: a folder of per-agent AB3DMOT detection folders (ego/, 1/: V2V4Real's layout).",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="With --detections: KITTI-tracking labels, one NNNN.txt per sequence.",
)
@click.option(
    "--seqmap",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --detections: sequence lengths (`name empty first last`).",
)
@click.option(
    "--val-sequences",
    help="With --detections: comma-separated sequences kept for validation (model choice and the "
    "settings search), e.g. 0004,0009,0014,0019,0024,0029.",
)
@click.option(
    "--nll-epochs",
    type=int,
    default=0,
    show_default=True,
    help="Epochs of pre-training the net on the detections' own errors (Gaussian likelihood) first.",
)
@click.option(
    "--agent-slots",
    type=int,
    default=None,
    help="One-hot agent slots the net sees (default: the number of agents with --detections, else 0).",
)
@click.option(
    "--fixed-prior",
    type=click.Choice(["per-agent", "pooled"]),
    default="per-agent",
    show_default=True,
    help="With --detections: the fixed-noise filter's prior (--fixed-noise), one per agent (the "
    "collaborator's boxes are further off than the ego's) or one for all agents.",
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
@_ORDER
def train_tracker(
    data,
    detections,
    labels,
    seqmap,
    val_sequences,
    nll_epochs,
    agent_slots,
    fixed_prior,
    out,
    synthetic,
    detector,
    epochs,
    window,
    lr,
    seed,
    features,
    order,
) -> None:
    """Fit the fixed noise prior, then train the measurement-noise network through the
    multi-sensor filter (10-frame windows, box error after the update).

    With --detections/--labels (real per-agent detections): then tune the association and noise
    scale on the validation sequences, once for the fixed and once for the learned noise, and
    store both settings in OUT/noise.pt.
    """
    import torch

    from v2x.tracking.records import load_sequence
    from v2x.tracking.train import NoiseTrainConfig, train_noise_model

    torch.set_num_threads(1)
    base = NoiseTrainConfig(epochs=epochs, window=window, lr=lr, seed=seed, nll_epochs=nll_epochs)
    if detections is not None:
        _train_on_agents(
            detections,
            labels,
            seqmap,
            val_sequences,
            out,
            order,
            base,
            agent_slots,
            fixed_prior == "per-agent",
        )
        return
    if data is None:
        raise click.UsageError("give --data (records or a log) or --detections with --labels")
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
    cfg = replace(base, feature_channels=channels, agent_slots=agent_slots or 0)
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


def _train_on_agents(
    detections, labels, seqmap, val_sequences, out, order, base, agent_slots, per_agent_prior
) -> None:
    """``v2x train tracker --detections DIR --labels DIR``: see the command's help."""
    from v2x.datasets.errors import DatasetError
    from v2x.datasets.kitti_tracking import agent_folders
    from v2x.experiments.tracker_training import labelled_agent_sequences, train_on_agent_folders
    from v2x.experiments.tracking_files import seqmap_lengths
    from v2x.tracking.config import TrackerConfig

    if labels is None or not val_sequences:
        raise click.UsageError("--detections needs --labels and --val-sequences")
    validate = [v.strip() for v in val_sequences.split(",") if v.strip()]
    problems: list = []
    try:
        seqs = labelled_agent_sequences(detections, labels, order, seqmap_lengths(seqmap), problems)
    except (DatasetError, FileNotFoundError) as exc:
        raise _one_line(exc) from exc
    _report(problems)
    slots = agent_slots if agent_slots is not None else len(agent_folders(detections))
    cfg = replace(base, agent_slots=slots)
    try:
        summary = train_on_agent_folders(
            seqs, validate, out, cfg, TrackerConfig(affinity="giou_bev"), per_agent_prior=per_agent_prior
        )
    except ValueError as exc:
        raise _one_line(exc) from exc
    chosen = {mode: next(t for t in summary["tuning"][mode] if t["chosen"]) for mode in ("fixed", "learned")}
    click.echo(
        json.dumps(
            {
                "best_val_loss": summary["best_val_loss"],
                "fixed_val_loss": summary["fixed_val_loss"],
                "validation_sequences": summary["validation_sequences"],
                "chosen": chosen,
                "seconds": summary["seconds_total"],
            },
            indent=2,
            default=float,
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
