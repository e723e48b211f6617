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
_SECTION = re.compile(r"\*\*Example[^*\n]*:\*\*(.*?)(?=\n\s*\*\*\w[^*\n]*:\*\*|\Z)", re.S)
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
    cases = []
    for qualname, doc in _documented():
        blocks = [b for section in _SECTION.findall(doc)
                  for b in _BLOCK.findall(section)]
        for i, block in enumerate(blocks):
            suffix = f"[{i}]" if len(blocks) > 1 else ""
            cases.append(pytest.param(block, id=qualname + suffix))
    return cases


EXAMPLES = _examples()


def test_the_public_api_has_examples():
    names = {p.id.split("[")[0] for p in EXAMPLES}
    for name in ("jaxsens.solve", "jaxsens.Auto", "jaxsens.explain", "jaxsens.fit",
                 "jaxsens.compile_small_loops_whole", "jaxsens.nn.NeuralODE"):
        assert name in names, f"{name} has no runnable **Example:**"


@pytest.mark.parametrize("source", EXAMPLES)
def test_example_runs(source):
    exec(compile(source, "<docstring example>", "exec"), {"__name__": "__example__"})
