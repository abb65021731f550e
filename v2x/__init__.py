"""v2x-coop: real-time cooperative perception for connected vehicles and roadside units.

Core data model and geometry live here; ``v2x.datasets``, ``v2x.sim``, ``v2x.comm`` and
``v2x.tracking`` are installed from the top-level folders of the same names.
"""

__version__ = "0.1.0"
