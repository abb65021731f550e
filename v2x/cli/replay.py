"""``v2x replay``: play a log through the system as separate processes (docs/replay.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from v2x.cli.options import (
    box_merge_option,
    frames_option,
    insecure_option,
    message_weights_option,
    pick_option,
    precision_option,
    share_frame_option,
    warn_insecure,
)
from v2x.pipeline.config import LATE_POLICIES, TRACKERS
from v2x.pipeline.methods import DEFAULT_METHOD, method_names
from v2x.pipeline.replay.run import (
    REALTIME_AGENT_NICE,
    REALTIME_DEADLINE_MS,
    REALTIME_LATE_POLICY,
    realtime_timing,
)


def _fmt(v, spec: str = ".3f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def _status(p: dict, live: bool) -> None:
    """One status line, rewritten in place on a terminal."""
    ap = p.get("ap_bev") or {}
    parts = [f"frame {p.get('frames', 0)}/{p.get('total') or '?'}"]
    if ap:
        parts.append(f"AP@0.5 {_fmt(ap.get('0.5'))}")
    parts.append(f"{p.get('bytes_per_agent_frame', 0):.0f} B/agent/frame")
    if "delivered_to_ego" in p:
        parts.append(f"delivered {p['delivered_to_ego']} lost {p.get('lost_to_ego', 0)}")
    if p.get("missing_agent_frames"):
        parts.append(f"missing agents {p['missing_agent_frames']}")
    line = "  ".join(parts)
    if live:
        click.echo("\r" + line.ljust(100), nl=False)
    else:
        click.echo(line)


def _table(r: dict) -> str:
    ap = r.get("ap_bev") or {}
    m = r.get("messages") or {}
    realtime = r.get("clock") == "realtime"
    lat = (r.get("output_latency_ms") if realtime else r.get("latency_ms")) or {}
    basis = "wall clock, capture -> ego output" if realtime else "capture -> delivery at the ego"
    rows = [
        ("clock", r.get("clock", "-")),
        ("frames", f"{r.get('frames', 0)} of {r.get('frames_requested', '?')}"),
        ("AP@0.3 / 0.5 / 0.7", " / ".join(_fmt(ap.get(t)) for t in ("0.3", "0.5", "0.7"))),
        (
            "AMOTA / MOTA"
            + (" (detection-only: no track ids)" if r.get("tracking_scoring") == "detection-only" else ""),
            f"{_fmt(r.get('amota'), '.2f')} / {_fmt(r.get('mota'), '.2f')}",
        ),
        ("bytes per agent per frame", _fmt(r.get("bytes_per_agent_frame"), ".0f")),
        (
            "messages sent / delivered / dropped",
            f"{m.get('sent', '-')} / {m.get('delivered', '-')} / {m.get('dropped', '-')}",
        ),
        (
            "late: dropped / expired / fused",
            f"{m.get('late_dropped', '-')} / {m.get('expired', '-')} / {m.get('fused_stale', '-')}",
        ),
        (
            f"end-to-end latency p50 / p95 ms ({basis})",
            f"{_fmt(lat.get('p50'), '.1f')} / {_fmt(lat.get('p95'), '.1f')}",
        ),
    ]
    if realtime:
        rows.append(
            ("deadline misses / frames skipped", f"{r.get('deadline_misses')} / {r.get('frames_skipped')}")
        )
        stages = r.get("stage_ms") or {}
        if stages:
            names = ("ego_started", "ego_perceived", "agents_sent", "fuse_started", "output")
            rows.append(
                (
                    "p50 ms after capture: ego starts / perceived / agents sent / fuses / outputs",
                    " / ".join(_fmt((stages.get(n) or {}).get("p50"), ".0f") for n in names),
                )
            )
    nodes = r.get("nodes") or {}
    if nodes.get("lost") or nodes.get("restarts") or r.get("missing_agent_frames"):
        rows.append(
            (
                "agent nodes lost / restarted / agent-frames missing",
                f"{','.join(nodes.get('lost', [])) or '-'} / {sum((nodes.get('restarts') or {}).values())} / "
                f"{r.get('missing_agent_frames', 0)}",
            )
        )
    absences = r.get("agent_absences") or {}
    if absences:
        rows.append(
            (
                "frames each agent was skipped (absent)",
                ", ".join(f"{agent}: {n}" for agent, n in sorted(absences.items())),
            )
        )
    if r.get("wall_s") is not None:
        rows.append(("wall time s", f"{r['wall_s']:.1f}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    if r.get("partial"):
        lines.append(f"PARTIAL: {r.get('reason') or 'cut short'}")
    hint = _nothing_fused_hint(r)
    if hint:
        lines.append(hint)
    return "\n".join(lines)


def _nothing_fused_hint(r: dict) -> str | None:
    """Real time on a machine too slow for it: messages came, none in time. Without this line
    the run reads like cooperation and is the ego alone."""
    m = r.get("messages") or {}
    late = (m.get("late_dropped") or 0) + (m.get("expired") or 0)
    if r.get("clock") != "realtime" or m.get("fused") or not late:
        return None
    cfg = r.get("config") or {}
    tries = [] if cfg.get("precision") == "bf16" else ["--precision bf16 (on a CPU with AMX or AVX512-BF16)"]
    tries.append(
        "--max-age-ms 1000" if cfg.get("late_policy") == "compensate" else "--late-policy compensate"
    )
    return (
        f"NOTE: no collaborator's message was fused ({late} came too late), so these figures are "
        f"the ego alone's. This machine does not keep up with this many agents at 10 Hz; try "
        f"{', '.join(tries)}, or fewer --agents."
    )


@click.command("replay")
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--launch",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A launch YAML merged over the replay's own (node params, env, restart, transport, extra nodes).",
)
@click.option(
    "--channel",
    default="ideal",
    show_default=True,
    help="Channel preset: ideal, dsrc, cv2x, opencood, congested, lossy-burst.",
)
@click.option(
    "--budget",
    default="200kbps",
    show_default=True,
    help="Bits per second per link (e.g. 200kbps, 2Mbps) or 'none'.",
)
@click.option(
    "--method",
    type=click.Choice(method_names(aliases=True)),
    default=DEFAULT_METHOD,
    show_default=True,
    help="What collaborators send.",
)
@click.option("--tracker", type=click.Choice(TRACKERS), default="dmstrack", show_default=True)
@click.option(
    "--late-policy",
    type=click.Choice(LATE_POLICIES),
    help="Messages that miss the deadline: drop them, or fuse them into the next frame, "
    f"motion-compensated [default: drop; {REALTIME_LATE_POLICY} with --realtime].",
)
@click.option(
    "--deadline-ms",
    type=float,
    help=f"When the ego fuses, after capture [default: 100; {REALTIME_DEADLINE_MS:g} with --realtime].",
)
@click.option(
    "--max-age-ms",
    type=click.FloatRange(min=0),
    help="Oldest late message the compensate policy still fuses [default: 300].",
)
@click.option(
    "--max-scan-offset-ms",
    type=click.FloatRange(min=0),
    help="Real logs (DAIR-V2X-C): largest offset of a collaborator's scan from the ego's that the "
    "ego compensates; larger ones are fused as they are and counted in results.json's "
    "scan_offset_ms.over_limit [default: 100].",
)
@share_frame_option
@precision_option
@box_merge_option
@frames_option()
@pick_option
@click.option("--scene", "scenes", multiple=True, help="Only these scenes (repeatable).")
@click.option(
    "--agents",
    "max_agents",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Agents per frame, the ego included.",
)
@click.option(
    "--realtime", is_flag=True, help="Frames at 10 Hz on the wall clock (default: lock-step simulated clock)."
)
@click.option(
    "--agent-nice",
    type=click.IntRange(0, 19),
    default=None,
    help="CPU priority the collaborators' nodes give up, so on one machine they do not slow the "
    f"ego's [default: {REALTIME_AGENT_NICE} with --realtime, else 0].",
)
@click.option(
    "--record", type=click.Path(dir_okay=False, path_type=Path), help="Also write an MCAP recording here."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("replay-out"),
    show_default=True,
    help="Where results.json, detections.jsonl and the node logs go.",
)
@click.option(
    "--in-process", is_flag=True, help="Run the same frames in this process (run_frames), no nodes."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Channel seed (and --pick random's).")
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch threads per node."
)
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), help="Detector weights.")
@click.option(
    "--codebook",
    type=click.Path(exists=True, dir_okay=False),
    help="Codebook weights (decoded with the detector's own head).",
)
@message_weights_option
@click.option(
    "--keys",
    "keys_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="CurveZMQ keys folder with a pair per node (v2x keys generate) [default: fresh keys for "
    "this run in OUT/nodes/keys].",
)
@insecure_option
@click.option("--json", "as_json", is_flag=True, help="Print results.json instead of the table.")
def replay(
    data,
    launch,
    channel,
    budget,
    method,
    tracker,
    late_policy,
    deadline_ms,
    max_age_ms,
    max_scan_offset_ms,
    share_frame,
    precision,
    box_merge,
    frames,
    pick,
    scenes,
    max_agents,
    realtime,
    agent_nice,
    record,
    out,
    in_process,
    seed,
    threads,
    weights,
    codebook,
    message_weights,
    keys_dir,
    insecure,
    as_json,
) -> None:
    """Play the log DATA through agent, channel and ego nodes, each its own process, and score it.

    Prints a status line while it runs and a table at the end; writes OUT/results.json and
    OUT/detections.jsonl (`v2x viz --run OUT` draws them). Ctrl-C stops it and keeps partial results.
    """
    import json

    from v2x.comm.launch import LaunchError
    from v2x.datasets import DatasetError
    from v2x.perception.settings import resolve_share_frame
    from v2x.pipeline.config import PipelineError, RunConfig
    from v2x.pipeline.replay.run import ReplayOptions, run_in_process, run_replay

    try:
        from v2x.datasets import detect_format

        log_format = detect_format(data)  # a folder of unknown format: one clear line, before any work
        if realtime:  # fuse without waiting for this frame's messages (REALTIME_DEADLINE_MS)
            deadline_ms, late_policy = realtime_timing(deadline_ms, late_policy)
        cfg = RunConfig.from_options(
            method=method,
            budget=budget,
            channel=channel,
            deadline_ms=deadline_ms,
            tracker=tracker,
            **({} if late_policy is None else {"late_policy": late_policy}),
            **({} if max_age_ms is None else {"max_age_s": max_age_ms / 1000}),
            **({} if max_scan_offset_ms is None else {"max_scan_offset_s": max_scan_offset_ms / 1000}),
            share_frame=resolve_share_frame(share_frame, log_format),
            precision=precision,
            box_merge=box_merge,
            frames=frames,
            pick=pick,
            seed=seed,
            max_agents=max_agents,
            weights=weights,
            codebook=codebook,
            message_weights=message_weights,
        )
        if cfg.spec.needs_codebook:
            from v2x.messages.message_weights import message_weights_path
            from v2x.messages.pairing import resolve_codebook
            from v2x.perception.detector import resolve_weights

            detector_path = resolve_weights(weights, log_format)
            try:
                chosen = message_weights_path(message_weights, codebook, detector_path)
            except (OSError, ValueError) as exc:
                raise PipelineError(f"message_weights: {exc}") from exc
            book = resolve_codebook(codebook, detector_path)
            if chosen is None and not book.is_file():
                raise PipelineError(f"codebook: {book} does not exist (train one: v2x train codebook)")
        opts = ReplayOptions(
            Path(data),
            cfg,
            Path(out),
            realtime=realtime,
            record=record,
            launch=launch,
            scenes=list(scenes) or None,
            threads=threads,
            agent_nice=agent_nice,
            keys=keys_dir,
            insecure=insecure,
        )
        if insecure and not in_process:
            warn_insecure()
        live = sys.stdout.isatty() and not as_json
        progress = None if as_json else (lambda p: _status(p, live))
        results = run_in_process(opts, progress) if in_process else run_replay(opts, progress)
    except (DatasetError, PipelineError, LaunchError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from exc
    if not as_json and sys.stdout.isatty():
        click.echo()
    if as_json:
        click.echo(json.dumps(results, indent=1))
    else:
        click.echo(_table(results))
        click.echo(f"results: {Path(out) / 'results.json'}")
    if results.get("partial"):
        sys.exit(3)
