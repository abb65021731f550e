import pytest

from v2x.comm.launch import LaunchSpec, Supervisor


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("V2X_RUN_DIR", str(tmp_path / "runs"))
    return tmp_path


@pytest.fixture
def supervise(run_dir):
    """Start a launch spec; always stops every process at the end of the test."""
    started = []

    def start(nodes, **kw):
        spec = LaunchSpec(kw.pop("name", "t"), nodes, **kw)
        sup = Supervisor(spec, run_dir / f"run{len(started)}")
        sup.start()
        started.append(sup)
        return sup

    yield start
    for sup in started:
        sup.stop(timeout=5)
