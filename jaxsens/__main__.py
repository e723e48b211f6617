"""`python -m jaxsens demo [--quick] [--controls N] [--steps N] [--out FILE]`."""

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: python -m jaxsens demo [--quick] [--controls N] [--steps N] "
            "[--repeats N] [--out FILE]\n\n"
            "commands:\n"
            "  demo   train a controlled neural ODE on synthetic data and compare the\n"
            "         gradient time of every sensitivity method on it (about a\n"
            "         minute on 2 CPU cores; `demo --help` lists the options)"
        )
        return 0 if argv else 2
    if argv[0] != "demo":
        print(f"unknown command {argv[0]!r}; try `python -m jaxsens --help`.",
              file=sys.stderr)
        return 2
    from ._xla import compile_small_loops_whole

    compile_small_loops_whole()  # a fresh process: JAX has not started yet
    from ._demo import run

    run(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
