"""The benchmarks' sections of a Markdown file (benchmarks/RESULTS.md), each between its two markers.

Every benchmark script takes ``--results-md PATH`` and writes its tables through this module into
the blocks it owns::

    <!-- results:cpu-latency -->
    `python benchmarks/cpu_inference.py ... --results-md benchmarks/RESULTS.md`

    Run on 2025-01-31: <CPU>, 2 threads, torch 2.x; fp32 sgemm ... GFLOP/s at the start, ... at the end; ...

    | the script's table |
    <!-- /results:cpu-latency -->

A block holds the command that reproduces it, the date and the machine line of its run
(:class:`Machine`: one format for every script), then the script's tables, nothing else. Writing a
block replaces what lies between its markers and leaves every other byte of the file as it was; a
block that is not in the file yet is appended under a heading. The file is replaced in one step
(a reader never sees half of it), and a file whose markers do not pair up is refused before a
benchmark starts.

:data:`SECTIONS` names every block and the script that writes it: a script can write only a name
registered here, and benchmarks/RESULTS.md holds only these names (tests/benchmarks check both).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MARKER = re.compile(r"<!--\s*(/?)results:([^\s>]*)\s*-->")
NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


class ResultsFileError(ValueError):
    """A results file whose markers cannot be read (unpaired, nested, repeated), or an unknown section."""


@dataclasses.dataclass(frozen=True)
class Section:
    """One block of the results file: its marker name, the script in benchmarks/ that writes it, and the
    heading it gets when it is appended to a file that lacks it."""

    name: str
    script: str
    title: str


SECTIONS: dict[str, Section] = {}


def register(name: str, script: str, title: str) -> Section:
    """Adds a section to :data:`SECTIONS`; a second entry under the same name is refused."""
    if not NAME.fullmatch(name):
        raise ValueError(f"section name {name!r}: use lower-case letters, digits and '-'")
    if name in SECTIONS:
        raise ValueError(f"section {name!r} is registered twice ({SECTIONS[name].script} and {script})")
    SECTIONS[name] = Section(name, script, title)
    return SECTIONS[name]


for _case, _title in (("demo", "the demo case"), ("wide", "larger images"), ("two-classes", "two classes")):
    register(f"demo-recipe-{_case}", "demo_recipe.py", f"The demo recipe: {_title}")
register("fresh-clone", "fresh_clone.py", "Two commands from a fresh clone")
register("train-speed", "train_speed.py", "Training speed, lever by lever")
register("model-cost", "backbone_complexity.py", "Model size and cost")
register("cpu-latency", "cpu_inference.py", "CPU latency per backbone")
register("cpu-speed-sources", "cpu_inference.py", "Where the CPU speed comes from")
register("cpu-parity", "cpu_inference.py", "Parity of the fast path on trained models")
register("server-load", "server_load.py", "The server under load")
register("server-workers", "server_load.py", "Several worker processes")
register("server-micro-batch", "server_load.py", "Micro-batching")
register("server-before-after", "server_before_after.py", "The server at two commits: start-up and overhead")
for _case, _title in (("demo", "the demo model"), ("trained", "a trained model at 800 px"),
                      ("r50-800", "ResNet-50-FPN at 800 px")):
    register(f"runtime-peers-{_case}", "runtime_peers.py", f"The kit against other runtimes: {_title}")
register("predict-speed", "predict_speed.py", "Batch prediction: images per second")
register("predict-memory", "predict_speed.py", "Batch prediction: memory over many images")


def add_results_md_argument(parser) -> None:
    """``--results-md PATH``, the same flag in every benchmark script."""
    parser.add_argument("--results-md", type=Path, default=None, metavar="PATH",
                        help="also write this run's section(s) into the Markdown file PATH, between their markers "
                             "(e.g. benchmarks/RESULTS.md, as make bench does); default: no file")


# ---------------------------------------------------------------- the machine line
@dataclasses.dataclass
class Machine:
    """What a run's times are read against: the CPU, torch's threads, and the matrix-multiply rates
    (2048x2048, GFLOP/s) measured at the start of the run and, for fp32, again at its end."""

    cpu: str
    threads: int
    torch: str
    fp32_start: float
    bf16: float
    bf16_units: bool
    fp32_end: float | None = None

    @classmethod
    def measure(cls) -> Machine:
        """The machine now, at the start of a run (call :meth:`finish` at its end)."""
        import torch

        from maskrcnn_finetune.predictor import native_bf16
        from maskrcnn_finetune.timing import cpu_name, sgemm_gflops

        return cls(cpu=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__,
                   fp32_start=sgemm_gflops(), bf16=sgemm_gflops(dtype=torch.bfloat16), bf16_units=native_bf16())

    def finish(self) -> Machine:
        """Measures the fp32 rate again at the end of the run (a drop: the machine got busier)."""
        from maskrcnn_finetune.timing import sgemm_gflops

        self.fp32_end = sgemm_gflops()
        return self

    def line(self, date: datetime.date | None = None) -> str:
        """The one line every block gives its run: date, CPU, threads, torch, the rates."""
        date = date or datetime.date.today()
        end = "not measured" if self.fp32_end is None else f"{self.fp32_end:.0f}"
        return (f"Run on {date.isoformat()}: {self.cpu}, {self.threads} threads, torch {self.torch}; fp32 sgemm "
                f"{self.fp32_start:.0f} GFLOP/s at the start, {end} at the end; bf16 {self.bf16:.0f} GFLOP/s; "
                f"bf16 units: {'yes' if self.bf16_units else 'no'}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- the command
def command_line(script_file, argv: list[str] | None = None) -> str:
    """The command that reproduced a run, as a user pastes it from the repository's root:
    ``python benchmarks/x.py ARGS``, every path under the repository written relative to it.

    Args:
        script_file: the script's ``__file__``.
        argv: its arguments (default: ``sys.argv[1:]``).
    """
    script = Path(script_file).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    args = sys.argv[1:] if argv is None else list(argv)
    prefix = str(ROOT) + os.sep
    return shlex.join(["python", str(script), *(str(arg).replace(prefix, "") for arg in args)])


def render(command: str, machine: Machine, tables: str, date: datetime.date | None = None) -> str:
    """A block's text: the command, the machine line, the tables."""
    make = os.environ.get("RESULTS_MD_MAKE_TARGET")
    via = f" (run by `make {make}`)" if make else ""
    return f"`{command}`{via}\n\n{machine.line(date)}\n\n{tables.strip()}\n"


# ---------------------------------------------------------------- the markers
def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def find_blocks(text: str, where: str = "the file") -> dict[str, tuple[int, int]]:
    """Every block of ``text``: name -> (end of its opening marker, start of its closing marker).

    Raises:
        ResultsFileError: a marker without its pair, a block opened twice or inside another, a
            marker whose name is empty; the message lists every problem with its line.
    """
    blocks: dict[str, tuple[int, int]] = {}
    problems: list[str] = []
    open_name, open_at, open_line = None, 0, 0
    for match in MARKER.finditer(text):
        closing, name = bool(match.group(1)), match.group(2)
        line = _line_of(text, match.start())
        if not NAME.fullmatch(name):
            problems.append(f"line {line}: marker {match.group(0)!r} has no valid name (lower-case letters, digits, '-')")
            continue
        if not closing:
            if open_name is not None:
                problems.append(f"line {open_line}: <!-- results:{open_name} --> is not closed before "
                                f"<!-- results:{name} --> at line {line}")
            elif name in blocks:
                problems.append(f"line {line}: a second <!-- results:{name} --> (the section is in the file twice)")
            open_name, open_at, open_line = name, match.end(), line
        elif open_name is None:
            problems.append(f"line {line}: <!-- /results:{name} --> closes a block that was not opened")
        elif name != open_name:
            problems.append(f"line {line}: <!-- /results:{name} --> closes <!-- results:{open_name} --> "
                            f"(opened at line {open_line})")
            open_name = None
        else:
            blocks.setdefault(name, (open_at, match.start()))
            open_name = None
    if open_name is not None:
        problems.append(f"line {open_line}: <!-- results:{open_name} --> is never closed "
                        f"(add <!-- /results:{open_name} --> after its block)")
    if problems:
        raise ResultsFileError(f"{where}: the results markers do not pair up, so no block can be replaced safely:\n  "
                               + "\n  ".join(problems)
                               + "\nFix the markers (each block opens and closes once, not nested) and run again.")
    return blocks


def replace_block(text: str, name: str, content: str, title: str | None = None, where: str = "the file") -> str:
    """``text`` with the block ``name`` holding ``content``; every byte outside the block unchanged.

    A block that is not there is appended at the end, under ``## title`` (default: the registered
    section's title).
    """
    if MARKER.search(content):
        raise ResultsFileError(f"the content of block {name!r} holds a results marker: it would break the file")
    blocks = find_blocks(text, where)
    body = "\n" + content.rstrip("\n") + "\n\n"
    if name in blocks:
        start, end = blocks[name]
        return text[:start] + body + text[end:]
    if title is None:
        title = SECTIONS[name].title if name in SECTIONS else name
    separator = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
    return f"{text}{separator}## {title}\n\n<!-- results:{name} -->{body}<!-- /results:{name} -->\n"


def read_text(path: Path) -> str:
    """The file's text exactly as stored (no newline translation); '' when it does not exist."""
    path = Path(path)
    if not path.exists():
        return ""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsFileError(f"{path} is not UTF-8 text ({exc}); pass a Markdown file to --results-md") from exc


def check_results_file(path, names) -> None:
    """Refuses, before a long run, a results file whose markers do not pair up or a section name that is
    not registered in :data:`SECTIONS`.

    Raises:
        ResultsFileError: with every problem and its fix.
    """
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise ResultsFileError(f"unknown results section(s) {', '.join(unknown)}: register them in "
                               "benchmarks/results_md.py (SECTIONS) with the script that writes them")
    path = Path(path)
    if path.is_dir():
        raise ResultsFileError(f"--results-md {path} is a folder: pass a Markdown file, e.g. benchmarks/RESULTS.md")
    find_blocks(read_text(path), str(path))


def write_sections(path, tables: dict[str, str], command: str, machine: Machine,
                   date: datetime.date | None = None) -> None:
    """Writes each ``tables[name]`` (Markdown) as the block ``name`` of ``path``, under ``command`` and
    ``machine``'s line; one atomic replacement of the file for all of them.

    Raises:
        ResultsFileError: unpaired markers in ``path``, or a name not in :data:`SECTIONS`.
    """
    from maskrcnn_finetune.files import atomic_path

    path = Path(path)
    check_results_file(path, tables)
    text = read_text(path)
    for name, table in tables.items():
        text = replace_block(text, name, render(command, machine, table, date), where=str(path))
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))
        if mode is not None:
            os.chmod(tmp, mode)
        else:  # a new file gets the usual permissions, not the temporary file's private ones
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)


def markdown_table(header: list[str], rows: list[list], align: str | None = None) -> str:
    """A Markdown table; ``align``: one character per column, 'l' or 'r' (default: all left)."""
    align = align or "l" * len(header)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
