"""One run of the system: run configuration, the method registry, agent and ego stages, the frame
exchange, the simulated clock, which frames of a log a command runs (``frames``), scoring, and ``replay`` (the same stages as node processes).
"""
