"""What a feature message carries and which cells it picks (:class:`FeatureScheme`): the message
layer's own words for a method, so the codec never needs the method registry above it
(``v2x.pipeline.methods`` names a scheme for each method that sends features).

Imports nothing heavy: the command line reads it without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["FeatureEncoding", "FeatureScheme", "Selection"]


class FeatureEncoding(Enum):
    """How each sent cell's features travel."""

    FP32 = "fp32"
    FP16 = "fp16"
    #: codebook indices (the receiver looks them up in the same codebook)
    CODES = "codes"

    @property
    def needs_codebook(self) -> bool:
        return self is FeatureEncoding.CODES


class Selection(Enum):
    """Which occupied cells a collaborator would send, best first, before the budget cuts the list."""

    #: every occupied cell, most confident first
    ALL = "all"
    #: where2comm: demanded cells whose confidence reaches the threshold
    THRESHOLD = "threshold"
    #: demanded cells, most demand x confidence first
    CONFIDENT = "confident"
    #: information filling: the cells of the blocks the shared offers assign to this collaborator
    FILLING = "filling"
    #: the hybrid's: occupied cells, most confident first, under a budget and without a demand;
    #: cells under the boxes the same message carries are left out, so what the codes describe
    #: is where the sender is unsure
    UNSURE = "unsure"

    @property
    def uses_demand(self) -> bool:
        """Whether the ego first broadcasts what it lacks (all but ALL and UNSURE read it)."""
        return self not in (Selection.ALL, Selection.UNSURE)

    @property
    def uses_offers(self) -> bool:
        """Whether collaborators broadcast offers and assign blocks from them before sending."""
        return self is Selection.FILLING


@dataclass(frozen=True)
class FeatureScheme:
    """One way of sending features: the encoding and the selection of cells."""

    encoding: FeatureEncoding
    selection: Selection

    @property
    def needs_codebook(self) -> bool:
        return self.encoding.needs_codebook

    @property
    def uses_demand(self) -> bool:
        return self.selection.uses_demand

    @property
    def uses_offers(self) -> bool:
        return self.selection.uses_offers
