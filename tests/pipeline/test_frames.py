"""Frame selection (``--frames N --pick first|spread|random``, scenes) and the frame driver."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from v2x.pipeline.config import PipelineError, RunConfig
from v2x.pipeline.frames import PICKS, FrameSelection, FrameStep, drive, select_frames


@dataclass(frozen=True)
class _Frame:
    scenario: str
    index: int
    ego_id: str = "ego"


class _Log:
    """What selection and the driver use of a log: length, indexing, scenarios."""

    def __init__(self, scenes: dict[str, int], ego_of: dict[int, str] | None = None):
        names = [(name, i) for name, n in scenes.items() for i in range(n)]
        self.frames = [_Frame(s, i, (ego_of or {}).get(k, "ego")) for k, (s, i) in enumerate(names)]
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> _Frame:
        self.reads.append(i)
        return self.frames[i]

    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(f.scenario for f in self.frames))

    def scenario_indices(self, name: str) -> list[int]:
        return [k for k, f in enumerate(self.frames) if f.scenario == name]


LOG = _Log({"test/scene_a": 40, "test/scene_b": 25, "test/scene_c": 35})


# -- selection ----------------------------------------------------------------------------------------
def test_first_takes_the_first_n_in_log_order_and_none_or_too_many_take_all():
    assert select_frames(LOG, FrameSelection(5)) == [0, 1, 2, 3, 4]
    for pick in PICKS:
        assert select_frames(LOG, FrameSelection(None, pick)) == list(range(100))
        assert select_frames(LOG, FrameSelection(0, pick)) == list(range(100))
        assert select_frames(LOG, FrameSelection(500, pick)) == list(range(100))


@pytest.mark.parametrize(("n", "count"), [(100, 7), (100, 30), (400, 100), (10, 4), (3, 2)])
def test_spread_is_the_evenly_spaced_frames_eval_has_always_used(n, count):
    """The shipped detection and AP-against-bytes tables were measured on these frames."""
    log = _Log({"s": n})
    want = sorted(set(np.linspace(0, n - 1, count).round().astype(int).tolist()))
    assert select_frames(log, FrameSelection(count, "spread")) == want
    assert select_frames(_Log({"s": 10}), FrameSelection(4, "spread")) == [0, 3, 6, 9]


@pytest.mark.parametrize(("n", "count", "seed"), [(100, 30, 0), (100, 30, 7), (1600, 300, 0)])
def test_random_is_the_seeded_sample_codebook_training_has_always_used(n, count, seed):
    """The shipped codebook's 300 frames: ``default_rng(seed).choice(n, N, replace=False)``, sorted."""
    log = _Log({"s": n})
    want = sorted(np.random.default_rng(seed).choice(n, min(count, n), replace=False).tolist())
    got = select_frames(log, FrameSelection(count, "random", seed))
    assert got == want and len(got) == count
    assert got == select_frames(log, FrameSelection(count, "random", seed))  # reproducible
    assert got != select_frames(log, FrameSelection(count, "random", seed + 1))


def test_scenes_restrict_the_candidates_and_the_pick_applies_within_them():
    a, c = list(range(40)), list(range(65, 100))
    assert select_frames(LOG, FrameSelection(scenes=("scene_c", "test/scene_a"))) == a + c
    assert select_frames(LOG, FrameSelection(3, scenes=("scene_c",))) == [65, 66, 67]
    spread = select_frames(LOG, FrameSelection(3, "spread", scenes=("scene_a", "scene_c")))
    assert spread == [(a + c)[j] for j in (0, 37, 74)]
    rnd = select_frames(LOG, FrameSelection(10, "random", 3, scenes=("scene_c",)))
    assert len(rnd) == 10 and set(rnd) <= set(c) and rnd == sorted(rnd)


def test_an_unknown_or_ambiguous_scene_is_refused_by_name():
    log = _Log({"test/scene_a": 2, "train/scene_a": 2, "test/scene_b": 2})
    with pytest.raises(PipelineError, match="scene: scene_x, scene_a not in the log"):
        select_frames(log, FrameSelection(scenes=("scene_x", "scene_a", "scene_b")))
    assert select_frames(log, FrameSelection(scenes=("train/scene_a",))) == [2, 3]


def test_a_bad_pick_or_count_is_refused():
    with pytest.raises(PipelineError, match="pick: use one of first, spread, random"):
        FrameSelection(3, "evenly")
    with pytest.raises(PipelineError, match="frames"):
        FrameSelection(-1)
    with pytest.raises(PipelineError, match="pick"):
        RunConfig(pick="last")


def test_a_run_selects_with_its_frames_pick_and_seed():
    cfg = RunConfig.from_options(frames=10, pick="random", seed=4)
    assert FrameSelection.of_run(cfg, ["scene_b"]) == FrameSelection(10, "random", 4, ("scene_b",))
    assert FrameSelection.of_run(RunConfig()) == FrameSelection()
    assert RunConfig().pick == "first" and RunConfig.from_options(pick="spread").to_dict()["pick"] == "spread"


# -- the driver ---------------------------------------------------------------------------------------
def test_the_driver_walks_the_selected_frames_in_order_and_marks_sequences():
    log = _Log({"s1": 3, "s2": 3}, ego_of={4: "other", 5: "other"})
    steps = list(drive(log, lambda s: s, [0, 2, 3, 4, 5]))
    assert [(s.k, s.index, s.frame.scenario) for s in steps] == [
        (0, 0, "s1"),
        (1, 2, "s1"),
        (2, 3, "s2"),
        (3, 4, "s2"),
        (4, 5, "s2"),
    ]
    # the first frame, a new scenario and another ego each start a sequence
    assert [s.new_sequence for s in steps] == [True, False, True, True, False]
    assert all(isinstance(s, FrameStep) for s in steps) and log.reads == [0, 2, 3, 4, 5]


def test_the_driver_is_lazy_and_yields_what_the_step_returns():
    log = _Log({"s": 4})
    walk = drive(log, lambda s: s.index * 10, [1, 3], progress=True, postfix=lambda r: {"r": str(r)})
    assert log.reads == []  # nothing is read before the results are asked for
    assert next(walk) == 10 and log.reads == [1]
    assert list(walk) == [30]


def test_without_indices_the_driver_walks_every_frame_of_a_list_or_a_stream():
    frames = [_Frame("a", 0), _Frame("a", 1), _Frame("b", 0)]
    for source in (frames, iter(frames)):
        got = list(drive(source, lambda s: (s.k, s.index, s.new_sequence)))
        assert got == [(0, 0, True), (1, 1, False), (2, 2, True)]


# -- the command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command",
    [
        "v2x.cli.eval_detection:eval_detection",
        "v2x.cli.codebook:eval_comm",
        "v2x.cli.codebook:train_codebook",
        "v2x.cli.replay:replay",
        "v2x.cli.demo:demo",
    ],
)
def test_every_command_with_frames_has_the_same_pick_option(command):
    import importlib

    module, name = command.split(":")
    cmd = getattr(importlib.import_module(module), name)
    options = {p.name: p for p in cmd.params}
    pick, frames = options["pick"], options["frames"]
    assert tuple(pick.type.choices) == PICKS and pick.default == "first"
    assert pick.help.startswith("Which N frames --frames takes")
    assert frames.type.min == 1 and frames.help.startswith("Use N frames of the log (which ones: --pick)")


def test_the_sweep_config_knows_the_same_picks():
    from v2x.experiments.sweep import PICKS as SWEEP_PICKS

    assert SWEEP_PICKS == PICKS
