"""v2x-coop: real-time cooperative perception for connected vehicles and roadside units.

The folders follow the data flow (``docs/architecture.md``): ``core`` (the data model), ``perception``,
``messages``, ``pipeline``, ``metrics``, ``experiments``, ``output``, ``training`` and the ``cli``.
``v2x.datasets``, ``v2x.sim``, ``v2x.comm`` and ``v2x.tracking`` are installed from the top-level folders
of the same names.
"""

from pathlib import Path

__version__ = "0.1.0"

#: shipped data of the package: trained weights (with their provenance) and YAML configurations
WEIGHTS = Path(__file__).resolve().parent / "weights"
CONFIGS = Path(__file__).resolve().parent / "configs"
