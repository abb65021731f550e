"""The AP-versus-bytes experiment (``v2x eval comm``) and codebook training (``v2x train codebook``).

Every feature method runs through :func:`v2x.messages.codec.exchange` (the hybrid with its boxes
attached), late fusion through :func:`send_boxes`: messages are really encoded, their ``len()``
is what is counted (headers and coordination messages included), and the ego decodes them before
fusing. Agents' encoder and head run once per frame and are shared by all methods.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from v2x.comm.wire import encoded_size, peek_header
from v2x.core.boxes import Boxes
from v2x.messages.codebook import Codebook, CodebookConfig, fit_from_maps
from v2x.messages.codec import MessageCodec, Outgoing, exchange
from v2x.messages.scheme import FeatureEncoding, FeatureScheme, Selection
from v2x.metrics.bootstrap import paired_ap_difference
from v2x.metrics.detection import DetectionEvaluator
from v2x.perception.cooperative import (
    AgentPerception,
    Perception,
    SharedBoxes,
    SharedFeatures,
    encoding_frames,
    evaluation_ground_truth,
    with_own_boxes,
)
from v2x.perception.encoder import sanitize_points
from v2x.perception.settings import check_share_frame
from v2x.pipeline.frames import FrameSelection, FrameStep, drive, select_frames
from v2x.pipeline.methods import Method, get_method

__all__ = ["CommSetting", "encoder_maps", "evaluate_comm", "fit_codebook", "plot_comm", "send_boxes"]

DEFAULT_BUDGETS = (256, 512, 1024, 2048, 4096, 16384, 65536)
WHERE2COMM_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7)


@dataclass(frozen=True)
class CommSetting:
    method: str
    budget: int | None = None  # bytes per agent per frame; None: unlimited
    #: where2comm's confidence threshold; the hybrid's box score cut (None: its default)
    threshold: float | None = None

    @property
    def spec(self) -> Method:
        return get_method(self.method)

    @property
    def name(self) -> str:
        """The registry's name (an alias resolved): a row's ``method``."""
        return self.spec.name

    @property
    def scheme(self) -> FeatureScheme | None:
        """How the method sends features (the registry's word for it); None: boxes alone."""
        return self.spec.features


def settings_for(
    methods: list[str],
    budgets: list[int],
    hybrid_cuts: list[float] | None = None,
    thresholds: list[float] | None = None,
) -> list[CommSetting]:
    """A method that sends every cell runs once, unlimited; a threshold selection over its
    thresholds; any other over the budgets. Boxes alone (late fusion) run over the budgets (the
    most confident that fit) and once unlimited, so they have a point at every budget and their
    ceiling. ``hybrid_cuts``: the hybrid at each budget once per box score cut (None: its
    default cut). ``thresholds``: a threshold selection's (None: :data:`WHERE2COMM_THRESHOLDS`)."""
    out: list[CommSetting] = []
    for m in methods:
        spec = get_method(m)
        if spec.features is None:
            if not spec.sends_boxes:
                raise ValueError(f"method {m}: sends neither features nor boxes, nothing to compare by bytes")
            out += [CommSetting(m, budget=b) for b in budgets] + [CommSetting(m)]
            continue
        selection = spec.features.selection
        if selection is Selection.ALL:
            out.append(CommSetting(m))
        elif selection is Selection.THRESHOLD:
            out += [CommSetting(m, threshold=t) for t in (thresholds or WHERE2COMM_THRESHOLDS)]
        elif spec.attaches_boxes and hybrid_cuts:
            out += [CommSetting(m, budget=b, threshold=t) for b in budgets for t in hybrid_cuts]
        else:
            out += [CommSetting(m, budget=b) for b in budgets]
    return out


def send_boxes(
    codec: MessageCodec, collaborators: list[AgentPerception], budget: int | None = None
) -> tuple[list[SharedBoxes], dict[str, Outgoing]]:
    """Late fusion's frame in process, as the pipeline's agents send it: each collaborator's most
    confident boxes that fit ``budget`` in one detections message, really encoded and decoded
    (without variances: this experiment scores detection, not tracking). An agent whose budget
    cannot hold even an empty message says nothing."""
    out = {a.agent_id: Outgoing() for a in collaborators}
    received = []
    for a in collaborators:
        data = codec.detections_message(a, budget)
        if budget is not None and len(data) > budget:
            continue
        out[a.agent_id].messages.append(data)
        received.append(codec.read_detections(data))
    return received, out


def _merged(perception: Perception, ego: AgentPerception, received: list[SharedBoxes]) -> Boxes:
    """The ego's own boxes with those received merged in (late fusion, as the pipeline's ego)."""
    return perception.merge_boxes(ego.world_from_bev, ego.boxes, received) if received else ego.boxes


def _cell_bytes(
    shared: list[SharedFeatures],
    received: list[SharedBoxes],
    out: dict[str, Outgoing],
    shape: tuple[int, int],
) -> dict[str, int]:
    """Per collaborator, the bytes its feature message spends on cells (codes and their indices):
    its length less that of the same message without cells (header, empty cell set, its boxes)."""
    boxes = {b.agent_id: len(b.boxes) for b in received}
    sizes = {a: 0 for a in out}
    for f in shared:
        data = out[f.agent_id].messages[-1]  # the feature message goes last on the link
        n = boxes.get(f.agent_id, 0)
        bare = encoded_size(peek_header(data).type, shape, np.zeros(0, np.int64), detections=n or None)
        sizes[f.agent_id] = len(data) - bare
    return sizes


def evaluate_comm(
    log,
    perception: Perception,
    codec: MessageCodec,
    settings: list[CommSetting],
    frames: FrameSelection | None = None,
    progress: bool = True,
    share_frame: str = "ego",
    bootstrap: int = 0,
    bootstrap_block: int = 1,
    decoder=None,
) -> list[dict]:
    """Every setting on the same frames (``frames``, default all); collaborators' maps encoded in
    ``share_frame`` (as the pipeline's agents do), each agent's once for all settings.

    With ``bootstrap`` resamples, every budgeted row of a method other than late fusion gets
    ``"vs_late"``: its BEV AP minus late fusion's at the same budget, with the 95 % interval over
    paired resamples of the frames (runs of ``bootstrap_block`` consecutive frames;
    :func:`v2x.metrics.bootstrap.paired_ap_difference`). Rows without a late point at their
    budget (or unbudgeted ones) are compared with late fusion unbudgeted, and say so."""
    check_share_frame(share_frame)
    indices = select_frames(log, frames or FrameSelection())
    xy_range = perception.cfg.grid.xy_range
    evals = {s: DetectionEvaluator(eval_range=xy_range) for s in settings}
    # the hybrid's boxes alone (its codes removed), and what its cells cost
    hybrids = [s for s in settings if s.spec.attaches_boxes]
    boxes_only = {s: DetectionEvaluator(eval_range=xy_range) for s in hybrids}
    cell_bytes: dict[CommSetting, list[int]] = {s: [] for s in hybrids}
    n_boxes: dict[CommSetting, list[int]] = {s: [] for s in hybrids}
    sent: dict[CommSetting, list[int]] = {s: [] for s in settings}
    per_frame: dict[CommSetting, list[int]] = {s: [] for s in settings}
    cells: dict[CommSetting, list[int]] = {s: [] for s in settings}
    late = any(s.scheme is None for s in settings)

    def evaluate(step: FrameStep) -> None:
        frame = step.frame
        gt = evaluation_ground_truth(frame, perception.cfg.min_points_per_box)
        agents = [frame.ego, *frame.collaborators]
        into = encoding_frames(frame, share_frame)
        results = perception.agent_steps(agents, detect=True, into=into)
        ego, rest = results[0], results[1:]
        # late fusion's and the hybrid's boxes come from each collaborator's map in its own frame,
        # as in the pipeline
        own = perception.agent_steps(frame.collaborators) if (late or hybrids) and into is not None else rest
        with_boxes = [with_own_boxes(r, o) for r, o in zip(rest, own, strict=True)] if hybrids else rest
        for s in settings:
            if s.scheme is None:
                shared: list[SharedFeatures] = []
                received, out = send_boxes(codec, own, s.budget)
            else:
                senders = with_boxes if s.spec.attaches_boxes else rest
                shared, received, out = exchange(
                    codec, s.scheme, ego, senders, s.budget, **_knob(s), hybrid=s.spec.attaches_boxes
                )
            if s.spec.ego_detects_alone:
                evals[s].add(_merged(perception, ego, received), gt)
            else:
                reads = decoder if s.spec.needs_codebook else None  # message weights read codes
                in_each = s.spec.reads_in_senders_frame(share_frame)
                read = perception.ego_step(
                    ego, shared, received, reads, in_each_frame=in_each, boxes_first=s.spec.attaches_boxes
                )
                evals[s].add(read.boxes, gt)
            if s in boxes_only:
                boxes_only[s].add(_merged(perception, ego, received), gt)
                cell_bytes[s] += _cell_bytes(shared, received, out, codec.shape).values()
                got = {b.agent_id: len(b.boxes) for b in received}
                n_boxes[s] += [got.get(a, 0) for a in out]
            for o in out.values():
                sent[s].append(o.bytes)
                cells[s].append(o.cells_sent)
            per_frame[s].append(sum(o.bytes for o in out.values()))

    for _ in drive(log, evaluate, indices, progress=progress, desc="frames"):
        pass
    rows = []
    c = perception.cfg.bev_channels
    for s in settings:
        r = evals[s].result()
        b = np.array(sent[s]) if sent[s] else np.zeros(1)
        ego_frame = float(np.mean(per_frame[s])) if per_frame[s] else 0.0
        n_cells = float(np.mean(cells[s])) if cells[s] else 0.0
        encoding = s.scheme.encoding if s.scheme is not None else None
        if encoding is None:
            formula = None  # boxes: no cells
        elif encoding.needs_codebook:
            formula = n_cells * codec.codebook.cfg.bits_per_cell / 8
        else:
            formula = n_cells * c * (2 if encoding is FeatureEncoding.FP16 else 4)
        row = {
            "method": s.name,
            "budget_bytes": s.budget,
            "threshold": s.threshold,
            "bytes_mean": float(b.mean()),
            "bytes_max": int(b.max()),
            "log2_bytes": _log2(float(b.mean())),
            # CodeFilling's unit: what the ego's frame cost, every sender's link summed
            "log2_bytes_per_ego_frame": _log2(ego_frame),
            "paper_formula_bytes": formula,
            "cells_mean": n_cells,
            "ap_bev": r["ap_bev"],
            "ap_3d": r["ap_3d"],
            "frames": r["frames"],
            "codebook": codec.codebook.cfg.label()
            if codec.codebook is not None and encoding is not None and encoding.needs_codebook
            else None,
        }
        late_s = _late_at(settings, s) if bootstrap else None
        if late_s is not None:
            row["vs_late"] = {
                "late_budget_bytes": late_s.budget,
                "resamples": int(bootstrap),
                "block": int(bootstrap_block),
                "ap_bev": paired_ap_difference(
                    evals[late_s], evals[s], "bev", resamples=bootstrap, block=bootstrap_block
                ),
            }
        if s in boxes_only:
            row["code_bytes_mean"] = float(np.mean(cell_bytes[s])) if cell_bytes[s] else 0.0
            row["boxes_mean"] = float(np.mean(n_boxes[s])) if n_boxes[s] else 0.0
            row["ap_bev_boxes_only"] = boxes_only[s].result()["ap_bev"]
        row["share_frame"] = share_frame  # where the collaborators encoded (and detected)
        rows.append(row)
    return rows


def _knob(s: CommSetting) -> dict[str, float]:
    """``s.threshold`` as the argument of :func:`exchange` it sets: the hybrid's box score cut,
    else Where2comm's threshold; none when unset, so ``exchange``'s defaults hold."""
    if s.threshold is None:
        return {}
    return {"box_min_score" if s.spec.attaches_boxes else "threshold": s.threshold}


def _late_at(settings: list[CommSetting], s: CommSetting) -> CommSetting | None:
    """Late fusion's setting to compare ``s`` with: at ``s``'s budget, else unbudgeted; None for
    late fusion itself or when no late setting was run."""
    if s.scheme is None:
        return None
    late = [t for t in settings if t.scheme is None]
    same = [t for t in late if t.budget == s.budget and s.budget is not None]
    unlimited = [t for t in late if t.budget is None]
    return (same or unlimited or [None])[0]


def _log2(x: float) -> float | None:
    return math.log2(x) if x > 0 else None


def plot_comm(rows: list[dict], path: Path, reference: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharex=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, thr in zip(axes, ("0.5", "0.7"), strict=True):
        for m in methods:
            mine = [r for r in rows if r["method"] == m and r["bytes_mean"] > 0]
            pts = sorted((r["bytes_mean"], r["ap_bev"][thr]) for r in mine)
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            (line,) = ax.plot(xs, ys, marker="o" if len(pts) > 1 else "s", label=m)
            # a hybrid's codes removed: its boxes alone, at what they (and the request) cost
            alone = sorted(
                (r["bytes_mean"] - r["code_bytes_mean"], r["ap_bev_boxes_only"][thr])
                for r in mine
                if "ap_bev_boxes_only" in r
            )
            if alone:
                xs, ys = zip(*alone, strict=True)
                ax.plot(xs, ys, ls=":", marker=".", color=line.get_color(), label=f"{m}, boxes alone")
        if reference:
            for name, (val, style) in reference.items():
                if val.get(thr) is not None:
                    ax.axhline(val[thr], ls=style, color="0.4", lw=1)
                    ax.text(
                        ax.get_xlim()[0] if ax.lines else 1,
                        val[thr],
                        f" {name}",
                        va="bottom",
                        fontsize=8,
                        color="0.3",
                    )
        ax.set_xscale("log", base=2)
        ax.set(
            xlabel="bytes per agent per frame (log2 scale; headers and requests included)",
            ylabel=f"BEV AP@{thr}",
        )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def encoder_maps(log, perception: Perception, frames: FrameSelection, progress: bool = True):
    """(features, occupied) of every agent of the selected frames, from the frozen encoder, one
    frame at a time (a few hundred frames' maps do not fit in memory at once)."""

    def encode(step: FrameStep) -> list:
        agents = step.frame.agents.values()
        clouds = [sanitize_points(s.points_in_bev(), perception.cfg) for s in agents]
        bev = perception.model.encode(clouds)
        return [(bev.features[b], bev.occupied[b]) for b in range(len(clouds))]

    with torch.no_grad():
        for maps in drive(log, encode, select_frames(log, frames), progress=progress, desc="features"):
            yield from maps


def fit_codebook(
    log,
    perception: Perception,
    cfg: CodebookConfig,
    frames: FrameSelection | None = None,
    samples: int = 200_000,
    seed: int = 0,
    progress: bool = True,
    **kwargs,
) -> tuple[Codebook, dict]:
    """Residual product k-means (and optional refinement) on occupied-cell features of the frozen
    encoder, over ``frames`` (default: 300 at random, seeded with ``seed``, as the shipped
    codebook was sampled)."""
    frames = frames or FrameSelection(300, "random", seed)
    per_map = max(1, samples // max(1, len(select_frames(log, frames)) * 2))
    return fit_from_maps(
        cfg, encoder_maps(log, perception, frames, progress), cells_per_map=per_map, seed=seed, **kwargs
    )


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2))
