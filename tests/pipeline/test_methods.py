"""The method registry (``v2x.pipeline.methods``): each method defined once, by what it does, and no
code elsewhere deciding by a method's name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from v2x.messages.scheme import FeatureEncoding, FeatureScheme, Selection
from v2x.perception.fusion_kind import FusionKind, fusion_kind
from v2x.pipeline.methods import (
    ALIASES,
    DEFAULT_METHOD,
    FUSION_MODES,
    METHODS,
    Method,
    Sends,
    UnknownMethodError,
    comm_method_names,
    feature_method_names,
    fusion_mode,
    get_method,
    method_names,
)

REPO = Path(__file__).resolve().parents[2]
#: the code the rule covers (the installed packages), and the one module allowed to name methods
SCANNED = ("v2x", "comm", "tracking", "datasets", "sim")
REGISTRY = REPO / "v2x" / "pipeline" / "methods.py"
#: method names, their aliases and the fusion modes of ``v2x eval detection``
NAMES = frozenset({*METHODS, *ALIASES, *FUSION_MODES})
#: also the tracker's and the budget's word for nothing: counted only against something whose name
#: says it holds a method (``cfg.method == "none"``, ``mode != "none"``)
AMBIGUOUS = frozenset({"none"})
METHOD_LIKE = ("method", "mode", "fusion")


# -- the registry --------------------------------------------------------------------------------------
def test_every_method_in_a_stable_order():
    assert list(METHODS) == [
        "none",
        "late",
        "early",
        "raw",
        "raw-fp16",
        "where2comm",
        "codebook",
        "codefilling",
        "hybrid",
    ]
    assert all(m.name == name and m.description for name, m in METHODS.items())
    features = ("raw", "raw-fp16", "where2comm", "codebook", "codefilling", "hybrid")
    assert feature_method_names() == features
    assert comm_method_names() == ("late", *features)  # what `v2x eval comm` can put on its curve
    assert method_names() == tuple(METHODS)
    assert method_names(aliases=True) == (*METHODS, *ALIASES)
    assert DEFAULT_METHOD in METHODS


@pytest.mark.parametrize(
    ("name", "sends", "fusion", "scheme", "codebook", "demand", "offers", "detects", "topic"),
    [
        ("none", Sends.NOTHING, FusionKind.NONE, None, False, False, False, False, None),
        ("late", Sends.BOXES, FusionKind.LATE, None, False, False, False, True, "detections"),
        ("early", Sends.POINTS, FusionKind.EARLY, None, False, False, False, False, "points"),
        (
            "raw",
            Sends.FEATURES,
            FusionKind.INTERMEDIATE,
            ("FP32", "ALL"),
            False,
            False,
            False,
            True,
            "features",
        ),
        (
            "raw-fp16",
            Sends.FEATURES,
            FusionKind.INTERMEDIATE,
            ("FP16", "ALL"),
            False,
            False,
            False,
            True,
            "features",
        ),
        (
            "where2comm",
            Sends.FEATURES,
            FusionKind.INTERMEDIATE,
            ("FP32", "THRESHOLD"),
            False,
            True,
            False,
            True,
            "features",
        ),
        (
            "codebook",
            Sends.FEATURES,
            FusionKind.INTERMEDIATE,
            ("CODES", "CONFIDENT"),
            True,
            True,
            False,
            True,
            "features",
        ),
        (
            "codefilling",
            Sends.FEATURES,
            FusionKind.INTERMEDIATE,
            ("CODES", "FILLING"),
            True,
            True,
            True,
            True,
            "features",
        ),
        (
            "hybrid",
            Sends.FEATURES,
            FusionKind.INTERMEDIATE,
            ("CODES", "UNSURE"),
            True,
            False,
            False,
            True,
            "features",
        ),
    ],
)
def test_what_each_method_does(name, sends, fusion, scheme, codebook, demand, offers, detects, topic):
    m = METHODS[name]
    assert (m.sends, m.fusion) == (sends, fusion)
    want = None if scheme is None else FeatureScheme(FeatureEncoding[scheme[0]], Selection[scheme[1]])
    assert m.features == want
    assert (m.needs_codebook, m.uses_demand, m.uses_offers) == (codebook, demand, offers)
    assert m.agent_detects == detects and m.topic_kind == topic
    assert m.ego_detects_alone == (name in ("none", "late"))
    # only the hybrid attaches boxes to its features; collaborators decode boxes where they send them
    assert m.attaches_boxes == (name == "hybrid")
    assert m.sends_boxes == (name in ("late", "hybrid"))


def test_aliases_resolve_to_their_method():
    assert ALIASES == {"no-fusion": "none", "intermediate": "raw"}
    assert get_method("intermediate") is METHODS["raw"]
    assert get_method("no-fusion") is METHODS["none"]
    assert all(get_method(name) is m for name, m in METHODS.items())


def test_an_unknown_name_is_refused_with_the_known_ones():
    with pytest.raises(
        UnknownMethodError, match="unknown method 'fusion'; use one of none, late, early, raw"
    ):
        get_method("fusion")
    assert issubclass(UnknownMethodError, ValueError)
    with pytest.raises(
        ValueError, match="use one of none, late, early, intermediate, intermediate-own, intermediate-each"
    ):
        fusion_mode("intermediate-ego")
    with pytest.raises(ValueError, match="unknown fusion 'sideways'"):
        fusion_kind("sideways")


def test_a_method_that_contradicts_itself_is_refused():
    with pytest.raises(ValueError, match="feature scheme"):
        Method(
            "x",
            "boxes with a scheme",
            Sends.BOXES,
            FusionKind.LATE,
            FeatureScheme(FeatureEncoding.FP32, Selection.ALL),
        )
    with pytest.raises(ValueError, match="intermediate"):
        Method("x", "points fused as features", Sends.POINTS, FusionKind.INTERMEDIATE)
    with pytest.raises(ValueError, match="attached to a feature message"):
        Method("x", "boxes attached to boxes", Sends.BOXES, FusionKind.LATE, attaches_boxes=True)


def test_the_fusion_modes_are_the_uncompressed_methods_by_fusion_kind():
    assert list(FUSION_MODES) == [
        "none",
        "late",
        "early",
        "intermediate",
        "intermediate-own",
        "intermediate-each",
    ]
    assert {m.fusion for m in FUSION_MODES.values()} == set(FusionKind)
    assert FUSION_MODES["intermediate"].fusion is get_method("intermediate").fusion
    assert FUSION_MODES["intermediate"].share_frame is None  # the run's: --share-frame or the log's format
    assert FUSION_MODES["intermediate-own"].share_frame == "own"
    assert FUSION_MODES["intermediate-each"].share_frame == "each"
    assert fusion_mode("late") is FUSION_MODES["late"]


def test_a_run_config_resolves_and_checks_through_the_registry():
    from v2x.pipeline.config import PipelineError, RunConfig

    cfg = RunConfig(method="intermediate")
    assert cfg.method == "raw" and cfg.spec is METHODS["raw"]
    assert RunConfig().spec is METHODS[DEFAULT_METHOD]
    assert cfg.to_dict()["method"] == "raw"  # the name is what a config serializes
    with pytest.raises(PipelineError, match="method: unknown 'fusion'; use one of none, late"):
        RunConfig(method="fusion")


def test_replay_topics_follow_what_is_sent():
    from v2x.pipeline.replay.protocol import message_topic

    assert message_topic("7", METHODS["late"]) == "/agents/7/detections"
    assert message_topic("7", METHODS["early"]) == "/agents/7/points"
    assert {message_topic("7", get_method(m)) for m in feature_method_names()} == {"/agents/7/features"}
    with pytest.raises(ValueError, match="send nothing"):
        message_topic("7", METHODS["none"])


def test_the_command_line_offers_the_registry():
    from v2x.cli.codebook import eval_comm
    from v2x.cli.replay import replay

    [method] = [p for p in replay.params if p.name == "method"]
    assert tuple(method.type.choices) == method_names(aliases=True) and method.default == DEFAULT_METHOD
    [methods] = [p for p in eval_comm.params if p.name == "methods"]
    assert methods.default == ",".join(feature_method_names())


def test_the_registry_imports_without_torch():
    code = "import sys, v2x.pipeline.methods, v2x.pipeline\nassert 'torch' not in sys.modules, 'torch'\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]


# -- no method-name comparisons outside the registry ----------------------------------------------------
def _literals(node: ast.expr) -> set[str]:
    """String constants ``node`` is, or holds as a literal tuple, list or set."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return set()


def _named_like_a_method(node: ast.expr) -> bool:
    names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
    names += [n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)]
    return any(word in name.lower() for name in names for word in METHOD_LIKE)


def method_name_comparisons(source: str) -> list[tuple[int, str]]:
    """(line, comparison) for each ``==``, ``!=``, ``in`` or ``not in`` against a method name
    (alone, or in a literal tuple, list or set)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
            continue
        operands = [node.left, *node.comparators]
        named = set().union(*(_literals(o) for o in operands)) & NAMES
        if not named:
            continue
        if named <= AMBIGUOUS and not any(_named_like_a_method(o) for o in operands):
            continue  # the tracker's or the budget's "none"
        found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_checker_finds_method_name_comparisons():
    snippet = (
        "if cfg.method == 'late':\n"
        "    pass\n"
        "x = method in ('raw', 'raw-fp16')\n"
        "y = 'codefilling' != self.cfg.method\n"
        "z = mode == 'none'\n"
        "w = name not in ['where2comm']\n"
        "# other vocabularies are left alone\n"
        "a = cfg.tracker != 'none'\n"
        "b = budget in (None, 'none', 'unlimited', 0)\n"
        "c = env.strip().lower() in ('', '0', 'off', 'none')\n"
        "d = results['late']\n"
    )
    lines = [line for line, _ in method_name_comparisons(snippet)]
    assert lines == [1, 3, 4, 5, 6]


def test_no_code_compares_method_names_outside_the_registry():
    found = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            if path == REGISTRY:
                continue
            for line, text in method_name_comparisons(path.read_text()):
                found.append(f"{path.relative_to(REPO)}:{line}: {text}")
    assert not found, "ask the Method (v2x.pipeline.methods) instead:\n" + "\n".join(found)


def test_which_methods_the_ego_reads_in_their_senders_frame():
    """With share_frame "each", every feature method but the hybrid (whose boxes carry the
    sender's reading); with "ego" or "own", none."""
    each = {name for name, m in METHODS.items() if m.reads_in_senders_frame("each")}
    assert each == {"raw", "raw-fp16", "where2comm", "codebook", "codefilling"}
    for share_frame in ("ego", "own"):
        assert not any(m.reads_in_senders_frame(share_frame) for m in METHODS.values())
