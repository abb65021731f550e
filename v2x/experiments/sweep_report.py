"""What a sweep leaves behind: a tidy CSV (one row per cell), ``report.md`` and plots.

Axis columns hold the *effective* value of each cell (the channel preset's latency and loss
when the grid did not set them, the pipeline's agent cap and late policy), read from the
configuration the pipeline reports. So a cell of the main grid and a cell of an ``also`` grid
that differ only in how they were written line up in the same curve. Scenes are replicates:
tables and plots average over them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from v2x.comm.budget import parse_budget

__all__ = ["CSV_COLUMNS", "tidy_row", "write_outputs"]

AXIS_COLUMNS = [
    "method",
    "budget",
    "channel",
    "latency_ms",
    "jitter_ms",
    "loss",
    "agents",
    "scene",
    "late_policy",
]
METRIC_COLUMNS = [
    "ap_bev_0.3",
    "ap_bev_0.5",
    "ap_bev_0.7",
    "ap_3d_0.3",
    "ap_3d_0.5",
    "ap_3d_0.7",
    "amota",
    "mota",
    "bytes_per_agent_frame",
    "sent",
    "delivered",
    "dropped",
    "late_dropped",
    "msg_latency_p50_ms",
    "msg_latency_p95_ms",
]
CSV_COLUMNS = [
    "id",
    "status",
    *AXIS_COLUMNS,
    "budget_bps",
    "frames",
    *METRIC_COLUMNS,
    "wall_s",
    "attempts",
    "error",
]
#: metrics summed (not averaged) over scenes in the report
SUMMED = ("frames", "sent", "delivered", "dropped", "late_dropped", "wall_s")


def tidy_row(rec: dict) -> dict[str, Any]:
    """One CSV row from a cell record (ok, failed or missing)."""
    cell, res = rec["cell"], rec.get("result") or {}
    conf = res.get("config") or {}
    chan = conf.get("channel") or {}
    ap, ap3 = res.get("ap_bev") or {}, res.get("ap_3d") or {}
    msgs, lat = res.get("messages") or {}, res.get("latency_ms") or {}
    budget = cell.get("budget")
    row: dict[str, Any] = {
        "id": rec["id"],
        "status": rec["status"],
        "method": res.get("method", cell.get("method")),
        "budget": budget,
        "channel": cell.get("channel"),
        "latency_ms": _ms(chan.get("latency_s"), cell.get("latency_ms")),
        "jitter_ms": _ms(chan.get("jitter_s"), cell.get("jitter_ms")),
        "loss": chan.get("loss", cell.get("loss")),
        "agents": conf.get("max_agents", cell.get("agents")),
        "scene": cell.get("scene", ""),
        "late_policy": conf.get("late_policy", cell.get("late_policy")),
        "budget_bps": parse_budget(budget),
        "frames": res.get("frames"),
        "amota": res.get("amota"),
        "mota": res.get("mota"),
        "bytes_per_agent_frame": res.get("bytes_per_agent_frame"),
        "sent": msgs.get("sent"),
        "delivered": msgs.get("delivered"),
        "dropped": msgs.get("dropped"),
        "late_dropped": msgs.get("late_dropped"),
        "msg_latency_p50_ms": lat.get("p50"),
        "msg_latency_p95_ms": lat.get("p95"),
        "wall_s": res.get("wall_s", rec.get("seconds")),
        "attempts": rec.get("attempts"),
        "error": rec.get("error"),
    }
    for t in ("0.3", "0.5", "0.7"):
        row[f"ap_bev_{t}"], row[f"ap_3d_{t}"] = ap.get(t), ap3.get(t)
    return row


def _ms(seconds: float | None, requested: float | None) -> float | None:
    return round(seconds * 1000, 6) if seconds is not None else requested


def write_outputs(records: list[dict], out: Path, cfg: Any) -> list[str]:
    """results.csv, the plots and report.md in ``out``; the names written."""
    rows = [tidy_row(r) for r in records]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    plots = write_plots(rows, out)
    write_report(rows, out, cfg, plots)
    return ["results.csv", "report.md", *plots]


# -- aggregation --------------------------------------------------------------------------------------
def _key(row: dict, cols: Iterable[str]) -> tuple:
    return tuple(row[c] for c in cols)


def _mean(values: Iterable[Any]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return sum(v) / len(v) if v else None


def aggregate(rows: list[dict], by: list[str]) -> list[dict]:
    """Rows with equal ``by`` merged (scenes as replicates): metrics averaged, counts summed."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_key(r, by), []).append(r)
    out = []
    for members in groups.values():
        agg = {c: members[0][c] for c in by}
        agg["scenes"] = len(members)
        for c in [*METRIC_COLUMNS, "frames", "wall_s"]:
            vals = [m[c] for m in members if m[c] is not None]
            agg[c] = (sum(vals) if c in SUMMED else _mean(vals)) if vals else None
        out.append(agg)
    return out


def varying(rows: list[dict], cols: Iterable[str]) -> list[str]:
    return [c for c in cols if len({str(r[c]) for r in rows}) > 1]


# -- plots --------------------------------------------------------------------------------------------
AP = ["ap_bev_0.3", "ap_bev_0.5", "ap_bev_0.7"]
#: file, grid axis along x, x column, y columns, x label, log x
PLOTS = [
    ("ap_vs_bytes.png", "budget", "bytes_per_agent_frame", AP, "bytes per agent per frame", True),
    ("amota_vs_bytes.png", "budget", "bytes_per_agent_frame", ["amota"], "bytes per agent per frame", True),
    ("ap_vs_loss.png", "loss", "loss", AP, "message loss probability (per fragment)", False),
    ("ap_vs_latency.png", "latency_ms", "latency_ms", AP, "channel latency (ms)", False),
]
LABELS = {
    "ap_bev_0.3": "AP@0.3 (BEV)",
    "ap_bev_0.5": "AP@0.5 (BEV)",
    "ap_bev_0.7": "AP@0.7 (BEV)",
    "amota": "AMOTA (%)",
}
LINE_KEYS = ["method", "budget", "channel", "latency_ms", "jitter_ms", "loss", "agents", "late_policy"]


def curves(rows: list[dict], axis: str, xcol: str, ycol: str) -> tuple[list[dict], list[dict]]:
    """(lines, references) of ``ycol`` against ``xcol`` as ``axis`` varies, everything else fixed.

    A line is a group of cells equal in every other axis (scenes averaged) with at least two
    values of ``axis``. References are single cells with no bytes (no fusion) drawn level."""
    ok = [r for r in rows if r["status"] == "ok" and r[ycol] is not None and r[xcol] is not None]
    fixed = [c for c in LINE_KEYS if c != axis]
    groups: dict[tuple, dict[Any, list[dict]]] = {}
    for r in ok:
        groups.setdefault(_key(r, fixed), {}).setdefault(r[axis], []).append(r)
    lines, refs = [], []
    for key, by_x in groups.items():
        pts = sorted((_mean(m[xcol] for m in ms), _mean(m[ycol] for m in ms)) for ms in by_x.values())
        entry = {"key": dict(zip(fixed, key, strict=True)), "points": pts}
        if len(by_x) > 1:
            lines.append(entry)
        elif xcol == "bytes_per_agent_frame" and pts[0][0] == 0:
            refs.append(entry)
    return lines, refs


def _label(entry: dict, differing: list[str]) -> str:
    extra = [f"{c}={entry['key'][c]}" for c in differing if c != "method"]
    return ", ".join([str(entry["key"]["method"]), *extra])


def write_plots(rows: list[dict], out: Path) -> list[str]:
    """Only for axes that vary; one line per method (and per other differing setting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for fname, axis, xcol, ycols, xlabel, logx in PLOTS:
        per_y = {y: curves(rows, axis, xcol, y) for y in ycols}
        if not any(lines for lines, _ in per_y.values()):
            (out / fname).unlink(missing_ok=True)  # a stale plot from an earlier grid
            continue
        fig, axes = plt.subplots(1, len(ycols), figsize=(4.6 * len(ycols), 3.8), squeeze=False)
        for ax, (y, (lines, refs)) in zip(axes[0], per_y.items(), strict=True):
            keys = [ln["key"] for ln in lines]
            differing = [c for c in LINE_KEYS if len({str(k.get(c)) for k in keys}) > 1]
            for ln in lines:
                pts = [(x, v) for x, v in ln["points"] if not logx or x > 0]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, marker="o", ms=4, label=_label(ln, differing))
            for ref in refs:
                ax.axhline(
                    ref["points"][0][1], ls="--", lw=1, color="0.4", label=f"{ref['key']['method']} (0 B)"
                )
            if logx:
                ax.set_xscale("log")
            ax.set(xlabel=xlabel, ylabel=LABELS.get(y, y))
            ax.grid(alpha=0.3, which="both")
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
        made.append(fname)
    return made


# -- report -------------------------------------------------------------------------------------------
def _fmt(v: Any, pct: bool = False, one: bool = False) -> str:
    """Table cells: percentages and scores with one decimal, bytes whole, small values 3 digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if pct or one:
        return f"{(100 if pct else 1) * v:.1f}"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in body),
    ]


def write_report(rows: list[dict], out: Path, cfg: Any, plots: list[str]) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    missing = [r for r in rows if r["status"] == "missing"]
    compute = sum(r["wall_s"] or 0 for r in rows if r["status"] != "missing")
    lines = [
        f"# Sweep `{cfg.name}`",
        "",
        f"Config `{cfg.source}`, log `{cfg.data}`.",
        f"{len(rows)} cells: {len(ok)} ok, {len(failed)} failed, {len(missing)} not run; "
        f"{compute / 60:.1f} min of compute.",
        "",
    ]
    scenes_vary = len({r["scene"] for r in ok}) > 1
    axes = ["method", *varying(ok, [c for c in AXIS_COLUMNS if c not in ("method", "scene")])]
    table = aggregate(ok, axes)
    note = (
        f" (mean over {len({r['scene'] for r in ok})} scenes; frames and messages summed)"
        if scenes_vary
        else ""
    )
    head = [
        *axes,
        "AP@0.3",
        "AP@0.5",
        "AP@0.7",
        "AMOTA",
        "MOTA",
        "B/agent/frame",
        "delivered/sent",
        "lat p50/p95 ms",
        "frames",
        "wall s",
    ]
    body = [
        [_fmt(r[c]) for c in axes]
        + [_fmt(r[c], pct=True) for c in AP]
        + [_fmt(r["amota"], one=True), _fmt(r["mota"], one=True), _fmt(r["bytes_per_agent_frame"])]
        + [f"{_fmt(r['delivered'])}/{_fmt(r['sent'])}"]
        + [f"{_fmt(r['msg_latency_p50_ms'])}/{_fmt(r['msg_latency_p95_ms'])}"]
        + [_fmt(r["frames"]), _fmt(r["wall_s"])]
        for r in table
    ]
    if body:
        lines += [
            f"## Results{note}",
            "",
            "AP in %, AMOTA and MOTA as the tracking evaluation reports them.",
            "",
        ]
        lines += [*_table(head, body), ""]
    if failed or missing:
        lines += ["## Cells without results", "", *_without_results(failed + missing)]
        lines += ["", "Failed cells are not rerun unless asked: `v2x sweep ... --retry-failed`.", ""]
    if plots:
        lines += ["## Plots", "", *(f"![{p}]({p})" for p in plots), ""]
    (out / "report.md").write_text("\n".join(lines))


def _without_results(rows: list[dict], shown: int = 6) -> list[str]:
    """One entry per distinct error (a missing codebook fails dozens of cells alike)."""
    by_error: dict[str, list[dict]] = {}
    for r in rows:
        by_error.setdefault(r["error"] or "not run (interrupted)", []).append(r)
    lines = []
    for why, members in by_error.items():
        lines.append(f"- {len(members)} cell(s): {why}")
        for r in members[:shown]:
            what = ", ".join(f"{c}={r[c]}" for c in AXIS_COLUMNS if r[c] not in (None, ""))
            lines.append(f"  - `{r['id']}` {what}")
        if len(members) > shown:
            lines.append(f"  - and {len(members) - shown} more (results.csv lists every cell)")
    return lines
