"""Evaluations built on the pipeline: detection and communication evaluations, the tracking
experiment, sweeps and their reports.
"""
