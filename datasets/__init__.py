"""Readers and writers for OPV2V / V2V4Real / DAIR-V2X-C logs and their validation (``v2x.datasets``)."""
