"""`import jaxsens` raises XLA:CPU's small-loop limit, unless it cannot or may not."""

import os
import subprocess
import sys

import pytest

from jaxsens import _xla


KEY = _xla.KEY


def test_this_process_compiles_loops_whole():
    # conftest imports jax only; jaxsens's import (first in every test module)
    # comes before any computation, so the suite itself runs with the raised limit.
    assert _xla.in_effect(), _xla.status
    assert _xla.note() is None


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("", f"--xla_backend_extra_options={KEY}=64"),
        (
            "--xla_dump_to=/tmp/d",
            f"--xla_dump_to=/tmp/d --xla_backend_extra_options={KEY}=64",
        ),
        (
            "--xla_backend_extra_options=xla_cpu_fold_all_constants=true --xla_dump_to=x",
            "--xla_backend_extra_options=xla_cpu_fold_all_constants=true,"
            f"{KEY}=64 --xla_dump_to=x",
        ),
        ("--xla_backend_extra_options=", f"--xla_backend_extra_options={KEY}=64"),
        # The user's own setting wins.
        (f"--xla_backend_extra_options={KEY}=7", f"--xla_backend_extra_options={KEY}=7"),
    ],
)
def test_with_threshold(flags, expected):
    assert _xla.with_threshold(flags, 64) == expected


def test_requested_bytes(monkeypatch):
    monkeypatch.delenv(_xla.ENV, raising=False)
    assert _xla.requested_bytes() == _xla.DEFAULT_BYTES
    monkeypatch.setenv(_xla.ENV, "4096")
    assert _xla.requested_bytes() == 4096
    monkeypatch.setenv(_xla.ENV, "0")
    assert _xla.requested_bytes() == 0
    for bad in ("lots", "-1", "1e6"):
        monkeypatch.setenv(_xla.ENV, bad)
        with pytest.raises(ValueError, match="JAXSENS_SMALL_LOOP_BYTES.*whole number"):
            _xla.requested_bytes()


@pytest.fixture
def fresh_state(monkeypatch):
    """`configure` may rewrite `XLA_FLAGS` and `status`: restore both after."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    monkeypatch.setattr(_xla, "status", _xla.status)
    monkeypatch.delenv(_xla.ENV, raising=False)
    return monkeypatch


def test_configure_sets_flags_before_the_backend_starts(fresh_state):
    fresh_state.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/d")
    fresh_state.setattr(_xla, "_backend_started", lambda: False)
    fresh_state.setenv(_xla.ENV, "2048")
    assert _xla.configure().startswith("raised to 2048 bytes")
    assert os.environ["XLA_FLAGS"] == (
        f"--xla_dump_to=/tmp/d --xla_backend_extra_options={KEY}=2048"
    )


def test_configure_leaves_flags_it_may_not_or_cannot_change(fresh_state):
    # The user's own limit.
    mine = f"--xla_backend_extra_options={KEY}=5"
    fresh_state.setenv("XLA_FLAGS", mine)
    fresh_state.setattr(_xla, "_backend_started", lambda: False)
    assert "set by your XLA_FLAGS" in _xla.configure()
    assert os.environ["XLA_FLAGS"] == mine
    # Opted out.
    fresh_state.setenv("XLA_FLAGS", "")
    fresh_state.setenv(_xla.ENV, "0")
    assert "JAXSENS_SMALL_LOOP_BYTES=0" in _xla.configure()
    assert os.environ["XLA_FLAGS"] == ""
    # Too late: the status says how to get it.
    fresh_state.delenv(_xla.ENV)
    fresh_state.setattr(_xla, "_backend_started", lambda: True)
    status = _xla.configure()
    assert os.environ["XLA_FLAGS"] == ""
    assert "before jaxsens was imported" in status
    assert f"XLA_FLAGS='--xla_backend_extra_options={KEY}=" in status


_PROBE = (
    "import sys, jax\n"
    "if sys.argv[1] == 'late': jax.numpy.ones(1).block_until_ready()\n"
    "import jaxsens\n"
    "from jaxsens import _xla\n"
    "print(_xla.in_effect(), _xla.note() is None)\n"
    "print(_xla.status)\n"
)


@pytest.mark.parametrize(
    "case, env, in_effect, status",
    [
        ("first", {}, True, "raised to 1048576 bytes"),
        ("first", {_xla.ENV: "0"}, False, "left at XLA's default"),
        ("late", {}, False, "not raised: JAX's backend was started"),
    ],
)
def test_in_a_fresh_process(case, env, in_effect, status):
    """What a user's script gets: compiled loops (or a note saying why not)."""
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", _xla.ENV)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, case],
        env={**base, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.splitlines()
    assert out[0] == f"{in_effect} {in_effect}"
    assert out[1].startswith(status)
