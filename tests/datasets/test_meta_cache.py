"""The disk cache of parsed agent metadata: a second reader gets the same frames from it, an
edited file is parsed again, and a broken or unwritable cache never fails a read."""

from __future__ import annotations

import numpy as np
import pytest

from v2x.datasets import open_log
from v2x.datasets.meta_cache import MetaDiskCache, cache_root
from v2x.datasets.opv2v import OPV2VWriter
from v2x.datasets.yamlio import dump_yaml, load_yaml


def _same_frame(a, b) -> None:
    assert list(a.agents) == list(b.agents) and a.ego_id == b.ego_id
    assert a.timestamp_ns == b.timestamp_ns
    for aid in a.agents:
        x, y = a.agents[aid], b.agents[aid]
        assert np.array_equal(x.world_from_lidar, y.world_from_lidar)
        assert x.mount_height == y.mount_height and x.kind == y.kind
        assert np.array_equal(x.points, y.points)
        assert np.array_equal(x.labels.xyzlwhy, y.labels.xyzlwhy)
        assert np.array_equal(x.labels.track_ids, y.labels.track_ids)
    assert np.array_equal(a.gt.xyzlwhy, b.gt.xyzlwhy)
    assert np.array_equal(a.gt.labels, b.gt.labels) and np.array_equal(a.gt.track_ids, b.gt.track_ids)
    assert a.points_per_gt_box().keys() == b.points_per_gt_box().keys()


@pytest.mark.parametrize("variant", ["opv2v", "v2v4real"])
def test_a_second_reader_gets_identical_frames_from_the_cache(tmp_path, monkeypatch, make_frame, variant):
    monkeypatch.setenv("V2X_CACHE_DIR", str(tmp_path / "cache"))
    with OPV2VWriter(tmp_path / "log", split=None, variant=variant) as w:
        w.write(make_frame(index=3))
        w.write(make_frame(index=4, seed=1))
    first = open_log(tmp_path / "log")
    parsed = [first[0], first[1]]
    assert first.disk_cache.hits == 0 and first.disk_cache.misses == 6
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 6

    second = open_log(tmp_path / "log")  # another reader, as another process would be
    cached = [second[0], second[1]]
    assert second.disk_cache.hits == 6 and second.disk_cache.misses == 0
    for a, b in zip(parsed, cached, strict=True):
        _same_frame(a, b)


def test_an_edited_file_is_parsed_again(tmp_path, monkeypatch, make_frame):
    monkeypatch.setenv("V2X_CACHE_DIR", str(tmp_path / "cache"))
    OPV2VWriter(tmp_path / "log", split=None).write(make_frame())
    before = open_log(tmp_path / "log")[0].ego.world_from_lidar[0, 3]
    path = next((tmp_path / "log").rglob("000007.yaml"))
    meta = load_yaml(path)
    meta["lidar_pose"][0] += 2.5
    meta["padding"] = "x"  # a different size as well, whatever the clock's resolution
    dump_yaml(path, meta)
    log = open_log(tmp_path / "log")
    assert log[0].ego.world_from_lidar[0, 3] == pytest.approx(before + 2.5)
    assert log.disk_cache.misses >= 1


def test_broken_entries_and_an_unwritable_cache_never_fail_a_read(tmp_path, monkeypatch, make_frame):
    OPV2VWriter(tmp_path / "log", split=None).write(make_frame())
    monkeypatch.setenv("V2X_CACHE_DIR", str(tmp_path / "cache"))
    want = open_log(tmp_path / "log")[0]
    for entry in (tmp_path / "cache").rglob("*.npz"):
        entry.write_bytes(b"not a zip file")
    log = open_log(tmp_path / "log")
    _same_frame(log[0], want)
    assert log.disk_cache.failures == 3 and log.disk_cache.hits == 0

    blocker = tmp_path / "a-file"
    blocker.write_text("the cache folder cannot be made under a file")
    monkeypatch.setenv("V2X_CACHE_DIR", str(blocker))
    log = open_log(tmp_path / "log")
    _same_frame(log[0], want)
    assert log.disk_cache.failures == 6 and log.disk_cache.hits == 0  # 3 reads and 3 writes


def test_the_cache_can_be_switched_off(tmp_path, monkeypatch, make_frame):
    OPV2VWriter(tmp_path / "log", split=None).write(make_frame())
    monkeypatch.setenv("V2X_CACHE_DIR", "off")
    assert cache_root() is None
    log = open_log(tmp_path / "log")
    log[0]
    assert log.disk_cache.folder is None and log.disk_cache.hits == log.disk_cache.misses == 0
    monkeypatch.delenv("V2X_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "v2x"
    assert MetaDiskCache("k", root=tmp_path, enabled=False).folder is None
