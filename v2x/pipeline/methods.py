"""The method registry: each cooperative-perception method defined once, by what it does.

Code elsewhere never compares method names: it asks the :class:`Method` (``cfg.spec.uses_demand``,
``spec.sends is Sends.BOXES``, ...). A method composes the lower layers' own vocabularies, which
sit below the pipeline and so cannot import it: how the ego fuses
(:class:`~v2x.perception.fusion_kind.FusionKind`) and, for the methods that send features, the
encoding and the selection of cells (:class:`~v2x.messages.scheme.FeatureScheme`).

Imports no torch: the command line offers the names from here and must start without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from v2x.messages.scheme import FeatureEncoding, FeatureScheme, Selection
from v2x.perception.fusion_kind import FusionKind
from v2x.perception.settings import decodes_in_each_frame

__all__ = [
    "ALIASES",
    "DEFAULT_METHOD",
    "FUSION_MODES",
    "METHODS",
    "FusionMode",
    "Method",
    "Sends",
    "UnknownMethodError",
    "comm_method_names",
    "feature_method_names",
    "fusion_mode",
    "get_method",
    "method_names",
]


class Sends(Enum):
    """What a collaborator puts on its link each frame."""

    NOTHING = "nothing"
    BOXES = "boxes"
    POINTS = "points"
    FEATURES = "features"


#: the replay topic (``/agents/<id>/<kind>``) each kind of message goes on
_TOPIC_KINDS = {Sends.BOXES: "detections", Sends.POINTS: "points", Sends.FEATURES: "features"}


@dataclass(frozen=True)
class Method:
    """One method: what collaborators send, how the ego fuses it, and what that implies."""

    name: str
    description: str
    sends: Sends
    fusion: FusionKind
    #: the encoding and selection of cells, for the methods that send features
    features: FeatureScheme | None = None
    #: other names the command line and configs accept for it
    aliases: tuple[str, ...] = ()
    #: the hybrid: the feature message also carries the sender's own boxes (boxes first, then
    #: cells outside them, within the one per-link budget); the ego merges them after detecting
    attaches_boxes: bool = False

    def __post_init__(self) -> None:
        if (self.features is not None) != (self.sends is Sends.FEATURES):
            raise ValueError(f"method {self.name}: a feature scheme goes with sending features")
        if self.attaches_boxes and self.features is None:
            raise ValueError(f"method {self.name}: boxes are attached to a feature message")
        if (self.fusion is FusionKind.INTERMEDIATE) != (self.sends is Sends.FEATURES):
            raise ValueError(f"method {self.name}: intermediate fusion is the fusion of features")

    @property
    def needs_codebook(self) -> bool:
        """Whether agents and ego must load the same codebook."""
        return self.features is not None and self.features.needs_codebook

    @property
    def uses_demand(self) -> bool:
        """Whether the ego broadcasts its demand each frame before collaborators send."""
        return self.features is not None and self.features.uses_demand

    @property
    def uses_offers(self) -> bool:
        """Whether collaborators broadcast offers and assign blocks from them (information filling)."""
        return self.features is not None and self.features.uses_offers

    def reads_in_senders_frame(self, share_frame: str) -> bool:
        """Whether the ego reads this method's messages in their sender's frame too: with
        ``share_frame`` "each", whole maps, selected cells and codes. Not the hybrid's: its message
        carries the sender's own reading already, its boxes, and a second reading of the cells
        it was unsure of placed cars worse (simulator validation, 1 KB: 76.4 against 78.8
        AP@0.7; docs/perception.md)."""
        return decodes_in_each_frame(share_frame) and self.features is not None and not self.attaches_boxes

    @property
    def agent_detects(self) -> bool:
        """Whether a collaborator runs its detection head: for the boxes it sends, or for the
        confidence that selects and orders its cells."""
        return self.sends in (Sends.BOXES, Sends.FEATURES)

    @property
    def sends_boxes(self) -> bool:
        """Whether a collaborator's message carries its own boxes (late fusion's alone, the
        hybrid's beside its cells): it must then decode them, not only its confidence."""
        return self.sends is Sends.BOXES or self.attaches_boxes

    @property
    def ego_detects_alone(self) -> bool:
        """Whether the ego's boxes come from its own map alone (no fusion, or late fusion of boxes
        after): it then decodes its own boxes whatever arrives."""
        return self.fusion in (FusionKind.NONE, FusionKind.LATE)

    @property
    def topic_kind(self) -> str | None:
        """The last part of the replay topic a collaborator's message goes on (None: sends nothing)."""
        return _TOPIC_KINDS.get(self.sends)


_NONE = Method(
    "none", "no fusion: the ego detects alone", Sends.NOTHING, FusionKind.NONE, aliases=("no-fusion",)
)
_LATE = Method("late", "late fusion: collaborators send their boxes", Sends.BOXES, FusionKind.LATE)
_EARLY = Method("early", "early fusion: collaborators send their points", Sends.POINTS, FusionKind.EARLY)


def _features(
    name: str,
    description: str,
    scheme: FeatureScheme,
    aliases: tuple[str, ...] = (),
    attaches_boxes: bool = False,
) -> Method:
    return Method(name, description, Sends.FEATURES, FusionKind.INTERMEDIATE, scheme, aliases, attaches_boxes)


#: every method, in the order tables and the command line list them
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _NONE,
        _LATE,
        _EARLY,
        _features(
            "raw",
            "every occupied cell, fp32 features",
            FeatureScheme(FeatureEncoding.FP32, Selection.ALL),
            aliases=("intermediate",),
        ),
        _features(
            "raw-fp16",
            "every occupied cell, fp16 features",
            FeatureScheme(FeatureEncoding.FP16, Selection.ALL),
        ),
        _features(
            "where2comm",
            "demanded cells whose confidence reaches the threshold, fp32 features",
            FeatureScheme(FeatureEncoding.FP32, Selection.THRESHOLD),
        ),
        _features(
            "codebook",
            "demanded cells, most demand x confidence first, codebook indices",
            FeatureScheme(FeatureEncoding.CODES, Selection.CONFIDENT),
        ),
        _features(
            "codefilling",
            "cells of the blocks information filling assigns, codebook indices",
            FeatureScheme(FeatureEncoding.CODES, Selection.FILLING),
        ),
        # no demand round: the boxes come first, as many as fit (late fusion's, most confident
        # first), and the codes take what they leave, for cells outside the boxes (docs/messages.md)
        _features(
            "hybrid",
            "the sender's boxes, then codebook indices for the cells outside them where it is unsure",
            FeatureScheme(FeatureEncoding.CODES, Selection.UNSURE),
            attaches_boxes=True,
        ),
    )
}
#: alias -> method name
ALIASES: dict[str, str] = {a: m.name for m in METHODS.values() for a in m.aliases}
#: what a run uses when it names no method
DEFAULT_METHOD = "codefilling"


class UnknownMethodError(ValueError):
    """A method name the registry does not know; names the known ones."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown method {name!r}; use one of {', '.join(METHODS)}")


def get_method(name: str) -> Method:
    """The method called ``name`` or one of its aliases."""
    method = METHODS.get(ALIASES.get(name, name))
    if method is None:
        raise UnknownMethodError(name)
    return method


def method_names(aliases: bool = False) -> tuple[str, ...]:
    """The methods' names in registry order, then (``aliases``) the aliases: command-line choices."""
    return (*METHODS, *ALIASES) if aliases else tuple(METHODS)


def feature_method_names() -> tuple[str, ...]:
    """The methods that send features (what ``v2x eval comm`` compares by default)."""
    return tuple(m.name for m in METHODS.values() if m.features is not None)


def comm_method_names() -> tuple[str, ...]:
    """The methods ``v2x eval comm`` can put on its AP-versus-bytes curve: those whose messages
    carry features or boxes (late fusion's boxes when asked for by name)."""
    return tuple(m.name for m in METHODS.values() if m.features is not None or m.sends_boxes)


# -- the fusion modes of ``v2x eval detection`` --------------------------------------------------------
@dataclass(frozen=True)
class FusionMode:
    """A mode ``v2x eval detection`` runs in process (``Perception.run_frame``): one fusion kind
    with everything sent, in the frame collaborators encode shared maps in: ``share_frame``, or,
    where that is None, the run's default (``--share-frame``, else the log format's:
    ``v2x.perception.settings.resolve_share_frame``), as ``v2x eval comm`` and ``v2x replay`` do."""

    name: str
    fusion: FusionKind
    share_frame: str | None = None

    def shares_in(self, default_share_frame: str = "ego") -> str:
        """The frame collaborators encode shared maps in, given the run's default."""
        return self.share_frame or default_share_frame

    def run(self, perception: Any, frame: Any, default_share_frame: str = "ego") -> Any:
        """``perception.run_frame`` in this mode (a ``v2x.perception.cooperative.Perception``;
        typed loosely so that this module needs no torch): the frame's ``FrameResult``."""
        return perception.run_frame(frame, self.fusion, self.shares_in(default_share_frame))


#: the uncompressed feature scheme: each fusion kind's reference sends everything as it is
_EVERYTHING = FeatureScheme(FeatureEncoding.FP32, Selection.ALL)


def _fusion_modes() -> dict[str, FusionMode]:
    """Each fusion kind's reference method (none, late, early, raw), named by its kind, in the
    run's share frame; intermediate fusion also with collaborators encoding in their own frame
    whatever the run's default (``-own``; the ego warps), and so encoded with the fused maps read
    in every agent's frame (``-each``)."""
    modes: dict[str, FusionMode] = {}
    for m in METHODS.values():
        if m.features not in (None, _EVERYTHING):
            continue
        kind = m.fusion.value
        modes[kind] = FusionMode(kind, m.fusion)
        if m.sends is Sends.FEATURES:
            modes[f"{kind}-own"] = FusionMode(f"{kind}-own", m.fusion, "own")
            modes[f"{kind}-each"] = FusionMode(f"{kind}-each", m.fusion, "each")
    return modes


#: none, late, early, intermediate, intermediate-own, intermediate-each
FUSION_MODES: dict[str, FusionMode] = _fusion_modes()


def fusion_mode(name: str) -> FusionMode:
    """The fusion mode called ``name``, or a ValueError naming the modes."""
    mode = FUSION_MODES.get(name)
    if mode is None:
        raise ValueError(f"unknown fusion mode {name!r}: use one of {', '.join(FUSION_MODES)}")
    return mode
