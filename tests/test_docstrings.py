"""Every `**Example:**` in the public API's docstrings runs as written."""

import inspect
import re

import pytest

import jaxsens


NAMESPACES = {
    "jaxsens": jaxsens,
    "jaxsens.nn": jaxsens.nn,
    "jaxsens.shooting": jaxsens.shooting,
    "jaxsens.collocation": jaxsens.collocation,
}
# From an `**Example:**` (or `**Example (...):**`) header to the next bold header.
_SECTION = re.compile(
    r"\*\*Example[^*\n]*:\*\*(.*?)(?=\n\s*\*\*\w[^*\n]*:\*\*|\Z)", re.S
)
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _documented():
    """(name, docstring) of each public object, and of each public method a
    public class defines itself, once per docstring."""
    seen = set()
    for prefix, module in NAMESPACES.items():
        items = [(prefix, module)]
        for name in getattr(module, "__all__", None) or dir(module):
            if name.startswith("_"):
                continue
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            items.append((f"{prefix}.{name}", obj))
            if inspect.isclass(obj):
                for attr in vars(obj):
                    member = getattr(obj, attr)
                    if not attr.startswith("_") and inspect.isroutine(member):
                        items.append((f"{prefix}.{name}.{attr}", member))
        for qualname, obj in items:
            doc = inspect.getdoc(obj)
            if doc and doc not in seen and "```python" in doc:
                seen.add(doc)
                yield qualname, doc


def _examples():
    """One case per docstring: its example blocks, run in order in one namespace
    (a later block may use what an earlier one defined)."""
    cases = []
    for qualname, doc in _documented():
        blocks = [b for section in _SECTION.findall(doc)
                  for b in _BLOCK.findall(section)]
        if blocks:
            cases.append(pytest.param(blocks, id=qualname))
    return cases


EXAMPLES = _examples()


def test_the_public_api_has_examples():
    names = {p.id for p in EXAMPLES}
    for name in ("jaxsens.solve", "jaxsens.Auto", "jaxsens.explain", "jaxsens.fit",
                 "jaxsens.compile_small_loops_whole", "jaxsens.nn.NeuralODE"):
        assert name in names, f"{name} has no runnable **Example:**"


@pytest.mark.parametrize("blocks", EXAMPLES)
def test_example_runs(blocks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that save files write them here
    namespace = {"__name__": "__example__"}
    for source in blocks:
        exec(compile(source, "<docstring example>", "exec"), namespace)
