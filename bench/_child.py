"""Run one benchmark unit in a fresh subprocess, surviving a method that hangs.

The child prints JSON lines: `{"start": name}` before a method's first call,
`{"done": name}` / `{"failed": name}` after it, `{"timing": true}` when the
round-robin timing starts, and finally `{"result": ...}`. If the child outlives
`timeout`, it is killed and re-run with the method that was running excluded
(its row then says why), or, if it was in the timing phase, with 1 round.
`OPENBLAS_NUM_THREADS=1` is set: multi-threaded OpenBLAS stalls for milliseconds
per small LAPACK call when the cores are oversubscribed.
"""

import json
import os
import subprocess
import sys
import time

from bench._common import ROOT


def _lines(out):
    res = []
    for x in out.splitlines():
        if x.startswith("{"):
            try:
                res.append(json.loads(x))
            except json.JSONDecodeError:
                pass
    return res


def run(question, child_args, *, rounds, timeout, log, attempts=4):
    """`python -m bench question --child *child_args --repeats R --exclude JSON`;
    returns the child's `result` dict (with `wall_s`), or `{"error": ...}`."""
    exclude = {}
    for _ in range(attempts):
        cmd = [
            sys.executable,
            "-m",
            "bench",
            question,
            "--child",
            *map(str, child_args),
            "--repeats",
            str(rounds),
            "--exclude",
            json.dumps(exclude),
        ]
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        t = time.perf_counter()
        p = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            running = None
            for x in _lines(out):
                if "start" in x:
                    running = x["start"]
                if "done" in x or "failed" in x:
                    running = None
                if "timing" in x:
                    running = "timing"
            if running in (None, "timing"):
                rounds = 1
                log(
                    f"    timeout ({timeout:.0f} s) while timing; retrying with 1 round"
                )
            else:
                exclude[running] = (
                    f"first call not finished within the {timeout:.0f} s cap"
                )
                log(f"    timeout ({timeout:.0f} s) in {running}; retrying without it")
            continue
        res = [x["result"] for x in _lines(out) if "result" in x]
        if not res:
            tail = err.strip().splitlines()[-3:]
            log(f"    child failed: {tail}")
            return {"error": " / ".join(tail)[:400]}
        res = res[0]
        res["wall_s"] = time.perf_counter() - t
        return res
    return {"error": "gave up after repeated timeouts"}


def say(**kw):
    """Child side: one progress/result line."""
    print(json.dumps(kw), flush=True)


def error_text(e, limit=300):
    """A one-line message for a failed method: the line of the exception that says
    what went wrong (equinox's runtime errors arrive wrapped in a callback
    traceback, their message on a later line)."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    keep = [
        x
        for x in lines
        if not x.startswith(("Traceback", "File ", "^", "~"))
        and "CpuCallback error" not in x
    ]
    pick = next((x for x in keep if "`" in x or "Error" in x), keep[0] if keep else "")
    return f"{type(e).__name__}: {pick}"[:limit]
