"""What `jaxsens.compile_small_loops_whole()` buys, problem by problem.

    python -m bench small_loops      # compare the two suite runs:
    python -m bench --xla-default suite   # -> results/suite_xla_default.json
    python -m bench suite                 # -> results/suite.json

Writes `results/small_loops.md`: every method's warm median and compile time
with XLA:CPU's default small-loop limit (1 KiB) and with the raised one (1 MiB),
and their ratio.
"""

import json
import os

from bench._common import RESULTS_DIR, ms as fmt


DEFAULT_JSON = os.path.join(RESULTS_DIR, "suite_xla_default.json")
RAISED_JSON = os.path.join(RESULTS_DIR, "suite.json")
OUT = os.path.join(RESULTS_DIR, "small_loops.md")


def main(argv):
    with open(DEFAULT_JSON) as fh:
        old = json.load(fh)["problems"]
    with open(RAISED_JSON) as fh:
        new = json.load(fh)["problems"]
    lines = [
        "# XLA:CPU small-loop limit: XLA's default (1 KiB) against 1 MiB "
        "(`jaxsens.compile_small_loops_whole()`)",
        "",
        "Made by `python -m bench small_loops` from two full suite runs (commands and",
        "commits below, per problem). Warm = median of round-robin warm calls; each",
        "problem in a fresh process holding all its methods and peers, so both runs",
        "apply one setting to jaxsens and the peers alike. Speed-up = default ÷",
        "raised.",
        "torchdiffeq does not use XLA: its column is the noise level. Each run was",
        "pinned to one core while the other core was loaded.",
    ]
    intro = len(lines)
    ratios = []
    for name in new:
        if name not in old:
            continue
        o, n = old[name], new[name]
        lines += [
            "",
            f"## {name} (n = {n['n']}, p = {n['p']}, {n['solver']})",
            "",
            f"XLA default: `{o['meta'].get('cmd')}`, {o['meta'].get('date')}, "
            f"jaxsens {o['meta'].get('jaxsens')}. Raised: `{n['meta'].get('cmd')}`, "
            f"{n['meta'].get('date')}, jaxsens {n['meta'].get('jaxsens')}.",
            "",
            "| method | warm, XLA default | warm, jaxsens | speed-up | compile, XLA "
            "default | compile, jaxsens |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m, row in n["rows"].items():
            before = o["rows"].get(m, {})
            a, b = before.get("warm"), row.get("warm")
            ratio = a / b if a and b else float("nan")
            if ratio == ratio and not m.startswith("torchdiffeq"):
                ratios.append((ratio, name, m))
            lines.append(
                f"| {m} | {fmt(a)} | {fmt(b)} | {ratio:.2f} | "
                f"{fmt(before.get('compile'))} | {fmt(row.get('compile'))} |"
            )
    if ratios:
        ratios.sort()
        lo, hi = ratios[0], ratios[-1]
        lines[intro:intro] = [
            "",
            f"Over {len(ratios)} JAX-based (method, problem) pairs: speed-up from "
            f"{lo[0]:.2f} ({lo[2]}, {lo[1]}) to {hi[0]:.2f} ({hi[2]}, {hi[1]}); "
            f"{sum(r < 0.95 for r, *_ in ratios)} below 0.95.",
        ]
    with open(OUT, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))

