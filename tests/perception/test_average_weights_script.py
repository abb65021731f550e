"""scripts/average_weights.py: a soup of one model's seeds loads and is their mean."""

from __future__ import annotations

import json

import pytest
import torch

from v2x.perception.config import DetectorConfig
from v2x.perception.detector import CooperativeDetector, load_detector


@pytest.fixture(scope="module")
def average_weights(load_script):
    return load_script("average_weights")


def test_the_average_of_two_seeds_loads_as_a_detector_with_the_mean_weights(tmp_path, average_weights):
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = CooperativeDetector(DetectorConfig())
        paths.append(tmp_path / f"s{seed}.pt")
        torch.save(model.checkpoint(provenance=json.dumps({"seed": seed})), paths[-1])
    out = average_weights.main([str(p) for p in paths] + ["--out", str(tmp_path / "soup.pt")])
    soup = load_detector(out)
    a, b = (torch.load(p, weights_only=True)["state_dict"] for p in paths)
    for name, tensor in soup.state_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, (a[name] + b[name]) / 2)
    assert not torch.equal(a["head.shared.0.weight"], b["head.shared.0.weight"])


def test_checkpoints_of_different_configurations_are_refused_naming_the_file(tmp_path, average_weights):
    small = CooperativeDetector(DetectorConfig())
    other = CooperativeDetector(DetectorConfig(bev_channels=32))
    torch.save(small.checkpoint(), tmp_path / "a.pt")
    torch.save(other.checkpoint(), tmp_path / "b.pt")
    with pytest.raises(ValueError, match=r"b\.pt: detector config differs"):
        average_weights.average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    with pytest.raises(ValueError, match="at least two"):
        average_weights.average_checkpoints([tmp_path / "a.pt"])
