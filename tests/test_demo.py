"""`python -m jaxsens demo --quick` runs end to end and writes its PNG."""

import subprocess
import sys

from tests import child_env


def test_help():
    out = subprocess.run([sys.executable, "-m", "jaxsens", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "python -m jaxsens demo" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "jaxsens", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_quick_demo(tmp_path):
    png = tmp_path / "demo.png"
    env = child_env()
    out = subprocess.run(
        [sys.executable, "-m", "jaxsens", "demo", "--quick", "--out", str(png)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "method" in out.stdout and "Discrete" in out.stdout
    assert "GaussAdjoint" in out.stdout
    assert f"wrote {png}" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "training" in out.stderr  # the progress bar
