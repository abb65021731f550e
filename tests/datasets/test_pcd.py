import numpy as np
import pytest

from v2x.datasets import DatasetError
from v2x.datasets.pcd import read_pcd, write_pcd


def test_real_opv2v_scans_load_with_count_and_intensity(realdata):
    for name, count in (("000070.pcd", 56443), ("000072.pcd", None)):
        pts = read_pcd(realdata / "opv2v" / name)
        assert pts.dtype == np.float32 and pts.shape[1] == 4
        if count:
            assert len(pts) == count
        assert pts[:, 3].min() >= 0.0 and pts[:, 3].max() <= 1.0
        assert pts[:, 3].max() > 0.5  # intensities really decoded from the packed rgb field


def test_real_dair_scans_decode_both_intensity_layouts(realdata):
    root = realdata / "dair-v2x-c" / "DAIR-V2X"
    veh = read_pcd(root / "vehicle-side" / "velodyne" / "017314.pcd")  # intensity U1 0..255
    inf = read_pcd(root / "infrastructure-side" / "velodyne" / "001366.pcd")  # intensity F4 0..1
    for pts in (veh, inf):
        assert pts[:, 3].min() >= 0.0 and pts[:, 3].max() <= 1.0 and len(pts) > 50000


@pytest.mark.parametrize("encoding", ["ascii", "binary", "binary_compressed"])
@pytest.mark.parametrize("intensity", ["rgb", "float", "uint8"])
def test_round_trip_is_exact(tmp_path, realdata, encoding, intensity):
    pts = read_pcd(realdata / "opv2v" / "000070.pcd")[::50]
    path = tmp_path / "x.pcd"
    write_pcd(path, pts, encoding, intensity)
    back = read_pcd(path)
    assert np.array_equal(back[:, :3], pts[:, :3])
    tol = 0.5 / 255 if intensity == "uint8" else 0.0
    assert np.abs(back[:, 3] - pts[:, 3]).max() <= tol + 1e-7


def test_header_that_disagrees_with_data(tmp_path):
    path = tmp_path / "bad.pcd"
    write_pcd(path, np.ones((5, 4), np.float32), "ascii")
    path.write_text(path.read_text().replace("POINTS 5", "POINTS 7").replace("WIDTH 5", "WIDTH 7"))
    with pytest.raises(DatasetError) as err:
        read_pcd(path)
    assert err.value.field == "POINTS" and str(path) in str(err.value)
    path.write_text(path.read_text().replace("WIDTH 7", "WIDTH 3"))
    with pytest.raises(DatasetError, match="WIDTH"):
        read_pcd(path)


def test_truncated_binary_names_the_file(tmp_path):
    path = tmp_path / "cut.pcd"
    write_pcd(path, np.ones((50, 4), np.float32), "binary")
    path.write_bytes(path.read_bytes()[:-9])
    with pytest.raises(DatasetError) as err:
        read_pcd(path)
    assert err.value.path == str(path) and err.value.field == "data"


def test_nan_points_are_an_error_or_dropped(tmp_path):
    pts = np.ones((4, 4), np.float32)
    pts[1, 0] = np.nan
    pts[2, 2] = np.inf
    path = tmp_path / "nan.pcd"
    write_pcd(path, pts, "binary")
    with pytest.raises(DatasetError, match="2 of 4 points"):
        read_pcd(path)
    assert len(read_pcd(path, drop_nonfinite=True)) == 2


def test_missing_and_non_pcd_files(tmp_path):
    with pytest.raises(DatasetError, match="missing"):
        read_pcd(tmp_path / "none.pcd")
    (tmp_path / "junk.pcd").write_text("hello\n")
    with pytest.raises(DatasetError, match="not a PCD"):
        read_pcd(tmp_path / "junk.pcd")
