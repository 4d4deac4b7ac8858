"""The README's two commands as a new user runs them: a fresh clone, `make demo`, then `make test`.

Usage:
    python benchmarks/fresh_clone.py [--work-dir /tmp/fresh_clone] [--keep] [--results-md benchmarks/RESULTS.md]

It clones the repository's committed HEAD into an empty folder (nothing beside it), then times in
that clone `make .venv/.installed` (the virtualenv with the kit: what `make demo` installs first), `make demo
DEMO_SERVE=0` (data, conversion, training, evaluation; the server is left out because it runs until
stopped) and `make test` (the test tools, then the whole suite). It reports each step's wall time,
the saved model's val mask AP50 as `scripts/evaluate.py` wrote it into the model folder, the
tests' closing line and the size of `.venv`. The clone is removed afterwards unless `--keep`.

Run it with nothing else busy: the times are read against the sgemm rate measured in the same run.
``--results-md`` writes the table as the section ``fresh-clone`` (see benchmarks/results_md.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_md, beside this file
from results_md import (Machine, add_results_md_argument, check_results_file, command_line,  # noqa: E402
                        markdown_table, write_sections)

ROOT = Path(__file__).resolve().parents[1]
SECTION = "fresh-clone"
_SUMMARY = re.compile(r"=+ (.*?\b\d+ passed\b.*?) in [\d.]+s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="an empty (or missing) folder to clone into (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its .venv takes gigabytes)")
    add_results_md_argument(parser)
    return parser


def pytest_summary(output: str) -> str:
    """pytest's closing counts ("430 passed, 2 warnings"), or '' when the output has none."""
    found = _SUMMARY.findall(output)
    return found[-1] if found else ""


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder`` (links not followed)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


# what this run's own make and virtualenv put into the environment; a new user's terminal has none of it
_NOT_A_USERS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "RESULTS_MD_MAKE_TARGET", "VIRTUAL_ENV",
                "PYTHONPATH")


def users_environment() -> dict[str, str]:
    """This process's environment without what ``make bench-clone`` and its virtualenv added."""
    return {k: v for k, v in os.environ.items() if k not in _NOT_A_USERS}


def timed(step: str, cmd: list[str], cwd: Path, log: Path) -> tuple[float, str]:
    """Runs ``cmd`` in ``cwd`` with its output in ``log``; returns (seconds, output). A failure stops the run."""
    print(f"{step}: {' '.join(cmd)} (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, text=True, env=users_environment())
    seconds = time.perf_counter() - start
    output = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed (exit {proc.returncode}) after {seconds / 60:.1f} min; the end of {log}:\n"
                         + output[-3000:])
    print(f"{step}: {seconds / 60:.1f} min", flush=True)
    return seconds, output


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def results_table(rows: dict) -> str:
    """The section's table from the measured ``rows`` (see :func:`main`)."""
    return markdown_table(
        ["step", "command", "wall time (min)", "what it left"],
        [["set-up: the kit into `.venv`", "`make .venv/.installed` (`make demo`'s first step)",
          f"{rows['venv_s'] / 60:.1f}", f"`.venv` {gigabytes(rows['venv_bytes'])}"],
         ["the demo job", "`make demo DEMO_SERVE=0`", f"{rows['demo_s'] / 60:.1f}",
          f"saved model: val mask AP50 {rows['mask_ap50']:.3f}, box AP50 {rows['box_ap50']:.3f} "
          "(`scripts/evaluate.py`)"],
         ["`make demo` from a fresh clone", "the two rows above", f"{(rows['venv_s'] + rows['demo_s']) / 60:.1f}", ""],
         ["the tests", "`make test`", f"{rows['test_s'] / 60:.1f}",
          f"{rows['tests']}; `.venv` {gigabytes(rows['test_venv_bytes'])} with the test tools"]],
        align="llrl")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.results_md:
        check_results_file(args.results_md, [SECTION])
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                      text=True, check=True).stdout.strip():
        print(f"note: the work tree has uncommitted changes; the clone holds the commit {head} only", flush=True)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="fresh_clone_"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty: pass an empty or missing --work-dir")
    clone = work / "maskrcnn-finetune"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    machine = Machine.measure()
    rows = {}
    rows["venv_s"], _ = timed("set-up", ["make", ".venv/.installed"], clone, work / "venv.log")
    rows["venv_bytes"] = folder_bytes(clone / ".venv")
    rows["demo_s"], _ = timed("make demo", ["make", "demo", "DEMO_SERVE=0"], clone, work / "demo.log")
    metrics = json.loads((clone / "outputs" / "demo" / "model" / "metrics.json").read_text())["val"]
    rows["mask_ap50"], rows["box_ap50"] = metrics["segm"]["AP50"], metrics["bbox"]["AP50"]
    rows["test_s"], output = timed("make test", ["make", "test"], clone, work / "test.log")
    rows["tests"] = pytest_summary(output) or "no pytest summary line"
    rows["test_venv_bytes"] = folder_bytes(clone / ".venv")
    machine.finish()
    if not args.keep:  # a failed step above leaves the clone and its logs for a look
        shutil.rmtree(work, ignore_errors=True)
    table = f"Commit {head}.\n\n" + results_table(rows)
    print(table)
    if args.results_md:
        write_sections(args.results_md, {SECTION: table}, command_line(__file__, argv), machine)
        print(f"wrote the section {SECTION} of {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
