import numpy as np
import pytest

from v2x.datasets import DatasetError
from v2x.datasets.pcd import read_pcd, read_pcd_counted, write_pcd


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


def test_binary_size_must_match_the_header(tmp_path):
    path = tmp_path / "cut.pcd"
    write_pcd(path, np.ones((50, 4), np.float32), "binary")
    whole = path.read_bytes()
    for data in (whole[:-9], whole + b"\0" * 16):  # truncated, or more points than declared
        path.write_bytes(data)
        with pytest.raises(DatasetError) as err:
            read_pcd(path)
        assert err.value.path == str(path) and err.value.field == "POINTS"


def test_truncated_compressed_data_names_the_file(tmp_path):
    path = tmp_path / "cut.pcd"
    pts = np.repeat(np.arange(50, dtype=np.float32), 40).reshape(500, 4)  # LZF compresses this
    write_pcd(path, pts, "binary_compressed")
    assert b"DATA binary_compressed" in path.read_bytes()[:200]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError) as err:
        read_pcd(path)
    assert err.value.path == str(path) and err.value.field == "data"


def test_header_entries_that_disagree_with_fields(tmp_path):
    path = tmp_path / "fields.pcd"
    write_pcd(path, np.ones((5, 4), np.float32), "ascii")
    path.write_text(path.read_text().replace("SIZE 4 4 4 4", "SIZE 4 4 4"))
    with pytest.raises(DatasetError) as err:
        read_pcd(path)
    assert err.value.field == "SIZE" and "4 FIELDS" in err.value.message


def test_rgb_declared_as_unsigned_int(tmp_path):
    path = tmp_path / "u4.pcd"
    red = np.array([0, 128, 255], np.uint32) << 16
    rows = "\n".join(f"{i} 0 0 {v}" for i, v in enumerate(red))
    header = "VERSION 0.7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F U\nCOUNT 1 1 1 1\nWIDTH 3\n"
    path.write_text(header + "HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 3\nDATA ascii\n" + rows + "\n")
    assert np.allclose(read_pcd(path)[:, 3], [0, 128 / 255, 1])


def test_nan_points_are_an_error_or_dropped(tmp_path):
    pts = np.ones((4, 4), np.float32)
    pts[1, 0] = np.nan
    pts[2, 2] = np.inf
    path = tmp_path / "nan.pcd"
    write_pcd(path, pts, "binary")
    with pytest.raises(DatasetError, match="2 of 4 points") as err:
        read_pcd(path)
    assert err.value.field == "x, z" and err.value.path == str(path)
    assert len(read_pcd(path, drop_nonfinite=True)) == 2
    assert read_pcd_counted(path, drop_nonfinite=True)[1] == 2
    pts = np.ones((3, 4), np.float32)
    pts[0, 3] = np.nan
    write_pcd(path, pts, "binary", "float")
    with pytest.raises(DatasetError) as err:
        read_pcd(path)
    assert err.value.field == "intensity"


def test_missing_and_non_pcd_files(tmp_path):
    with pytest.raises(DatasetError, match="missing"):
        read_pcd(tmp_path / "none.pcd")
    (tmp_path / "junk.pcd").write_text("hello\n")
    with pytest.raises(DatasetError, match="not a PCD"):
        read_pcd(tmp_path / "junk.pcd")


@pytest.mark.parametrize("encoding", ["ascii", "binary_compressed"])
def test_points_0_over_a_full_payload_is_refused(tmp_path, encoding):
    """A header saying 0 points over real data read as an empty scan before (and passed check)."""
    path = tmp_path / "zero.pcd"
    write_pcd(path, np.ones((40, 4), np.float32), encoding)
    data = path.read_bytes()
    path.write_bytes(data.replace(b"WIDTH 40\n", b"WIDTH 0\n").replace(b"POINTS 40\n", b"POINTS 0\n"))
    with pytest.raises(DatasetError) as err:
        read_pcd(path)
    assert err.value.path == str(path) and err.value.field == "POINTS"
    assert "0 points" in err.value.message


def test_sizes_from_the_header_are_bounded_before_reading(tmp_path):
    path = tmp_path / "huge.pcd"
    write_pcd(path, np.ones((40, 4), np.float32), "binary_compressed")
    data = path.read_bytes()
    n = str(10**12).encode()
    path.write_bytes(
        data.replace(b"WIDTH 40\n", b"WIDTH " + n + b"\n").replace(b"POINTS 40\n", b"POINTS " + n + b"\n")
    )
    with pytest.raises(DatasetError) as err:
        read_pcd(path)
    assert err.value.field == "WIDTH" and "outside" in err.value.message
    # the size word of the compressed block must agree with the header before it is decompressed
    head, _, payload = data.partition(b"DATA binary_compressed\n")
    bad = head + b"DATA binary_compressed\n" + payload[:4] + (2**32 - 1).to_bytes(4, "little") + payload[8:]
    path.write_bytes(bad)
    with pytest.raises(DatasetError) as err:
        read_pcd(path)
    assert err.value.field == "POINTS" and str(2**32 - 1) in err.value.message
