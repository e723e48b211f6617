"""`python -m bench [--xla-default] <question> [options]`: run one benchmark.

A question is a module `bench/<question>.py` with a `main(argv)`; `python -m bench`
alone lists them. `--xla-default` keeps XLA:CPU's default small-loop limit
instead of calling `jaxsens.compile_small_loops_whole()` (for comparisons).
"""

import importlib
import os
import pkgutil
import sys


def questions() -> list[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    return sorted(m.name for m in pkgutil.iter_modules([here])
                  if not m.name.startswith("_") and m.name != "problems")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from bench import _common

    if argv[:1] == ["--xla-default"]:
        os.environ[_common.XLA_DEFAULT_ENV] = "1"  # children inherit it
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ + "\nquestions: " + ", ".join(questions()))
        return 0 if argv else 2
    if argv[0] not in questions():
        print(f"unknown question {argv[0]!r}; known: {', '.join(questions())}",
              file=sys.stderr)
        return 2
    if not _common.xla_default():
        import jaxsens

        jaxsens.compile_small_loops_whole()  # a fresh process: JAX has not started
    module = importlib.import_module(f"bench.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
