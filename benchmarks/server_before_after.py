"""The server's start-up time and per-request overhead at two commits of the kit, timed alternately.

Usage:
    python benchmarks/server_before_after.py --model-dir outputs/demo/model --before REV [--after HEAD]
        [--rounds 5] [--requests 20] [--size 800] [--results-md benchmarks/RESULTS.md]

A change to how the server is configured or how it loads its model must not make it slower to start
or add work to each request. This script checks that on one machine: it checks out ``--before`` and
``--after`` into temporary folders (``git worktree add --detach``: the committed sources only), then,
for ``--rounds`` rounds, starts each checkout's ``rest_api_flask/flask_app.py`` in turn with this
Python (the same installed libraries for both) on a free loopback port, and measures:

- start-up: from the process's start to ``GET /health`` answering ``status: ok`` with the model
  loaded (the process imports, loads the model folder, warms up and binds its port);
- overhead: ``--requests`` sequential ``POST /api/v1/predict`` of one JPEG (a synthetic picture of
  ``--size`` px on its short side), each one's client latency minus the model time the server
  reports (``timing_ms.model``): decoding, the checks, the result files and the answer.

Alternating the two checkouts round by round spreads the machine's drift over both. It prints each
checkout's medians and the ratio after/before; ``--results-md`` writes them as the section
``server-before-after`` (see benchmarks/results_md.py).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_md, beside this file
from results_md import (Machine, add_results_md_argument, check_results_file, command_line,  # noqa: E402
                        markdown_table, write_sections)
from server_load import synthetic_image  # noqa: E402  the same picture as the load benchmark

ROOT = Path(__file__).resolve().parents[1]
SECTION = "server-before-after"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="the model folder both servers serve")
    parser.add_argument("--before", required=True, help="the git revision to compare against")
    parser.add_argument("--after", default="HEAD", help="the git revision measured against it (default: HEAD)")
    parser.add_argument("--rounds", type=int, default=5, help="start-ups of each checkout, alternately")
    parser.add_argument("--requests", type=int, default=20, help="requests per start-up (after one warm-up)")
    parser.add_argument("--size", type=int, default=800, help="short side of the synthetic image, px")
    parser.add_argument("--start-timeout", type=float, default=300, help="seconds a server may take to start")
    add_results_md_argument(parser)
    return parser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def checkout(rev: str, into: Path) -> str:
    """The committed tree of ``rev`` in ``into``; returns its short hash."""
    subprocess.run(["git", "worktree", "add", "--quiet", "--detach", str(into), rev], cwd=ROOT, check=True)
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=into, capture_output=True, text=True,
                          check=True).stdout.strip()


def one_round(source: Path, model_dir: Path, image: bytes, n_requests: int, timeout: float, work: Path) -> tuple:
    """Starts ``source``'s server, times its start-up, sends the requests; returns (start-up s, [overhead ms])."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(source))
    cmd = [sys.executable, "rest_api_flask/flask_app.py", "--model-dir", str(model_dir.resolve()),
           "--port", str(port), "--upload-folder", str(work / "uploads"), "--output-folder", str(work / "served"),
           "--infer-with-cpu"]
    log = open(work / "server.log", "w")
    start = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=source, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server of {source} stopped (exit {process.returncode}): "
                                 + (work / "server.log").read_text()[-2000:])
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"the server of {source} did not start in {timeout:.0f} s")
            try:
                body = requests.get(f"{url}/health", timeout=5).json()
                if body.get("status") == "ok" and body.get("model_loaded", True):
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.05)
        startup = time.perf_counter() - start
        overheads = []
        with requests.Session() as session:
            for i in range(n_requests + 1):
                sent = time.perf_counter()
                answer = session.post(f"{url}/api/v1/predict", files={"image": ("bench.jpg", image, "image/jpeg")},
                                      timeout=300)
                latency_ms = (time.perf_counter() - sent) * 1000
                if answer.status_code != 200:
                    raise SystemExit(f"the server of {source} answered {answer.status_code}: {answer.text[:500]}")
                if i:  # the first request is a warm-up
                    overheads.append(latency_ms - answer.json()["timing_ms"]["model"])
        return startup, overheads
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.results_md:
        check_results_file(args.results_md, [SECTION])
    image, _ = synthetic_image(args.size, "jpeg")
    with tempfile.TemporaryDirectory(prefix="server_before_after_") as tmp:
        tmp = Path(tmp)
        names, sources = {}, {}
        try:
            for which, rev in (("before", args.before), ("after", args.after)):
                sources[which] = tmp / which
                names[which] = checkout(rev, sources[which])
            machine = Machine.measure()
            startups = {"before": [], "after": []}
            overheads = {"before": [], "after": []}
            for r in range(args.rounds):
                for which in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    work = tmp / f"run_{which}_{r}"
                    work.mkdir()
                    s, o = one_round(sources[which], args.model_dir, image, args.requests, args.start_timeout, work)
                    startups[which].append(s)
                    overheads[which].extend(o)
                    print(f"round {r + 1}/{args.rounds} {which} ({names[which]}): start-up {s:.2f} s, "
                          f"overhead median {statistics.median(o):.1f} ms", flush=True)
            machine.finish()
        finally:
            for path in sources.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)
    start = {k: statistics.median(v) for k, v in startups.items()}
    over = {k: statistics.median(v) for k, v in overheads.items()}
    table = markdown_table(
        ["", f"before ({names['before']})", f"after ({names['after']})", "after / before"],
        [["start-up to a loaded model (s), median", f"{start['before']:.2f}", f"{start['after']:.2f}",
          f"{start['after'] / start['before']:.2f}"],
         ["overhead per request (ms), median", f"{over['before']:.1f}", f"{over['after']:.1f}",
          f"{over['after'] / over['before']:.2f}"]],
        align="lrrr")
    table = (f"{args.rounds} start-ups of each, alternately, {args.requests} requests each "
             f"({args.size} px JPEG); model folder `{args.model_dir}`.\n\n" + table)
    print(table)
    if args.results_md:
        write_sections(args.results_md, {SECTION: table}, command_line(__file__, argv), machine)
        print(f"wrote the section {SECTION} of {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
