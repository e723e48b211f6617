"""`jaxsens.compile_small_loops_whole`: on when called first, a named error when
called too late; `import jaxsens` alone changes nothing."""

import os
import subprocess
import sys

import pytest

import jaxsens
from jaxsens import _xla


KEY = _xla.KEY


def test_this_process_compiles_loops_whole():
    # conftest calls it before any computation, as the README says to.
    assert _xla.in_effect()
    assert "compiles this process's small loops whole" in _xla.status()
    jaxsens.compile_small_loops_whole()  # again: harmless


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("", f"--xla_backend_extra_options={KEY}=64"),
        (
            "--xla_dump_to=/tmp/d",
            f"--xla_dump_to=/tmp/d --xla_backend_extra_options={KEY}=64",
        ),
        (
            "--xla_backend_extra_options=xla_cpu_fold_all_constants=true "
            "--xla_dump_to=x",
            "--xla_backend_extra_options=xla_cpu_fold_all_constants=true,"
            f"{KEY}=64 --xla_dump_to=x",
        ),
        ("--xla_backend_extra_options=", f"--xla_backend_extra_options={KEY}=64"),
        # The user's own setting wins.
        (
            f"--xla_backend_extra_options={KEY}=7",
            f"--xla_backend_extra_options={KEY}=7",
        ),
    ],
)
def test_with_threshold(flags, expected):
    assert _xla.with_threshold(flags, 64) == expected


_PROBE = (
    "import os, sys\n"
    "import jaxsens\n"
    "assert 'XLA_FLAGS' not in os.environ, 'import jaxsens wrote XLA_FLAGS'\n"
    "import jax\n"
    "if sys.argv[1] == 'late': jax.devices()\n"
    "try:\n"
    "    jaxsens.compile_small_loops_whole()\n"
    "except RuntimeError as e:\n"
    "    print('raised', os.environ.get('XLA_FLAGS'))\n"
    "    print(e)\n"
    "else:\n"
    "    print('on', jaxsens._xla.in_effect())\n"
    "    print(os.environ['XLA_FLAGS'])\n"
)


@pytest.mark.parametrize(
    "case, first, second",
    [
        ("first", "on True", f"--xla_backend_extra_options={KEY}=1048576"),
        ("late", "raised None", "came too late: JAX's backend has already started"),
    ],
)
def test_in_a_fresh_process(case, first, second):
    """What a user's script gets: loops compiled whole, or an error with the fix."""
    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, case],
        env={**base, "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.splitlines()
    assert out[0] == first
    assert second in out[1]
    if case == "late":
        assert f"XLA_FLAGS='--xla_backend_extra_options={KEY}=1048576'" in out[1]


def test_too_late_raises_and_leaves_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/d")
    monkeypatch.setattr(_xla, "in_effect", lambda: False)
    with pytest.raises(RuntimeError, match="came too late.*Restart Python"):
        jaxsens.compile_small_loops_whole()
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/d"
    assert "Call `jaxsens.compile_small_loops_whole()` first" in _xla.status()
