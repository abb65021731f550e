"""The data model every stage shares: poses, boxes, IoU, pairing boxes, the BEV grid and the frame.

The only part of ``v2x`` that ``v2x.datasets``, ``v2x.sim``, ``v2x.comm`` and ``v2x.tracking`` import.
"""
