"""Every notebook in `notebooks/` executes without a cell error at CI size.

Each notebook reads `JAXSENS_NOTEBOOK_SIZE`; `small` shrinks its problems so that all
of them together execute in about two minutes on an idle 2-core CPU (JAX compile time
dominates). The committed notebooks hold the outputs of a full-size run; these tests
execute a copy in memory and never write the files.
"""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from tests import CHEAP_CODEGEN


NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_notebooks_found():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_linear_rates.ipynb", "02_controls.ipynb",
            "03_choosing_a_method.ipynb", "fitting.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_small_mode_and_outputs(path):
    nb = nbformat.read(path, as_version=4)
    source = "\n".join(c.source for c in nb.cells)
    assert "JAXSENS_NOTEBOOK_SIZE" in source, (
        f"{path.name} must read JAXSENS_NOTEBOOK_SIZE (small sizes for CI)")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), (
        f"{path.name} is committed unexecuted: run it (full size if affordable) and "
        "commit it with its outputs")
    assert not any(o.output_type == "error" for c in code for o in c.outputs), (
        f"{path.name} is committed with an error in its outputs")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, monkeypatch):
    # The kernel inherits this process's environment.
    monkeypatch.setenv("JAXSENS_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # threaded BLAS stalls on 2 cores
    monkeypatch.setenv("XLA_FLAGS", CHEAP_CODEGEN)  # each notebook sets up XLA itself
    monkeypatch.delenv("JAX_ENABLE_X64", raising=False)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
