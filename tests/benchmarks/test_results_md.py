"""benchmarks/results_md.py: a block replaced between its markers, every other byte kept; the registry of
sections against benchmarks/RESULTS.md and the scripts."""

from __future__ import annotations

import datetime
import os
import re
import stat

import pytest

from benchmark_scripts import BENCHMARKS, ROOT, SCRIPTS, load_benchmark

DAY = datetime.date(2025, 3, 4)


@pytest.fixture(scope="module")
def results_md():
    return load_benchmark("results_md")


def machine(results_md, end=181.4):
    return results_md.Machine(cpu="Test CPU", threads=2, torch="2.0", fp32_start=180.2, bf16=700.0,
                              bf16_units=True, fp32_end=end)


def block(text: str, name: str) -> str:
    return text.split(f"<!-- results:{name} -->\n", 1)[1].split(f"<!-- /results:{name} -->", 1)[0]


OTHER = ("# Results\r\n\nIntro with  odd   spacing and a trailing space \n\n## Model size\n\n"
         "<!-- results:model-cost -->\nnot measured yet: run `make bench`\n<!-- /results:model-cost -->\n\n"
         "## Training\n\nText between.\n<!-- results:train-speed -->\nthe old table\n<!-- /results:train-speed -->\n"
         "Tail without a final newline")


def test_a_block_is_replaced_and_every_other_byte_kept(results_md, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_bytes(OTHER.encode())
    results_md.write_sections(path, {"train-speed": "| a | b |\n|---|---|\n| 1 | 2 |"},
                              "python benchmarks/train_speed.py --iters 3", machine(results_md), DAY)
    text = path.read_bytes().decode()
    assert block(text, "train-speed") == (
        "`python benchmarks/train_speed.py --iters 3`\n\n"
        "Run on 2025-03-04: Test CPU, 2 threads, torch 2.0; fp32 sgemm 180 GFLOP/s at the start, 181 at the end; "
        "bf16 700 GFLOP/s; bf16 units: yes\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n")
    before, after = OTHER.split("<!-- results:train-speed -->")[0], OTHER.split("<!-- /results:train-speed -->")[1]
    assert text.startswith(before + "<!-- results:train-speed -->\n")  # the \r\n, the spaces, the other block
    assert text.endswith("<!-- /results:train-speed -->" + after)  # no newline added at the end
    assert block(text, "model-cost") == "not measured yet: run `make bench`\n"


def test_writing_twice_gives_the_same_bytes(results_md, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_bytes(OTHER.encode())
    tables = {"model-cost": "| x |\n|---|\n| 7 |", "train-speed": "| y |\n|---|\n| 8 |"}
    results_md.write_sections(path, tables, "python benchmarks/x.py", machine(results_md), DAY)
    once = path.read_bytes()
    results_md.write_sections(path, tables, "python benchmarks/x.py", machine(results_md), DAY)
    assert path.read_bytes() == once
    # another run replaces the block's whole content, not appends to it
    results_md.write_sections(path, {"model-cost": "| x |\n|---|\n| 9 |"}, "python benchmarks/x.py",
                              machine(results_md, end=150.0), DAY)
    text = path.read_text()
    assert "| 9 |" in block(text, "model-cost") and "| 7 |" not in text and "150 at the end" in text
    assert text.count("<!-- results:model-cost -->") == 1 and "| 8 |" in block(text, "train-speed")


def test_a_missing_block_is_appended_under_its_heading(results_md, tmp_path):
    path = tmp_path / "sub" / "RESULTS.md"  # neither the folder nor the file exist yet
    results_md.write_sections(path, {"cpu-parity": "| p |\n|---|\n| 1 |"}, "python benchmarks/cpu_inference.py",
                              machine(results_md), DAY)
    first = path.read_text()
    assert first.startswith("## Parity of the fast path on trained models\n\n<!-- results:cpu-parity -->\n`python")
    assert first.endswith("| 1 |\n\n<!-- /results:cpu-parity -->\n")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # a new file's usual permissions, not 0600
    results_md.write_sections(path, {"server-load": "| s |\n|---|\n| 2 |"}, "python benchmarks/server_load.py",
                              machine(results_md), DAY)
    text = path.read_text()
    assert text.startswith(first) and text[len(first):].startswith("\n## The server under load\n\n<!-- results:server-load -->")


def test_the_file_keeps_its_permissions(results_md, tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(OTHER)
    path.chmod(0o640)
    results_md.write_sections(path, {"model-cost": "| x |\n|---|"}, "python benchmarks/x.py", machine(results_md), DAY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name != "RESULTS.md"]  # no temporary file left


@pytest.mark.parametrize("text, problem", [
    ("<!-- results:model-cost -->\nx\n", r"line 1: <!-- results:model-cost --> is never closed"),
    ("a\n<!-- /results:model-cost -->\n", r"line 2: <!-- /results:model-cost --> closes a block that was not opened"),
    ("<!-- results:model-cost -->\n<!-- results:train-speed -->\n<!-- /results:train-speed -->\n"
     "<!-- /results:model-cost -->\n", r"line 1: <!-- results:model-cost --> is not closed before"),
    ("<!-- results:model-cost -->\n<!-- /results:train-speed -->\n", r"closes <!-- results:model-cost -->"),
    ("<!-- results:model-cost -->\n<!-- /results:model-cost -->\n<!-- results:model-cost -->\n"
     "<!-- /results:model-cost -->\n", r"line 3: a second <!-- results:model-cost -->"),
])
def test_unpaired_markers_are_refused_and_the_file_is_left_alone(results_md, tmp_path, text, problem):
    path = tmp_path / "RESULTS.md"
    path.write_text(text)
    with pytest.raises(results_md.ResultsFileError, match=re.escape(str(path)) + r"(.|\n)*" + problem) as error:
        results_md.write_sections(path, {"model-cost": "| x |"}, "python benchmarks/x.py", machine(results_md), DAY)
    assert "Fix the markers" in str(error.value)
    assert path.read_text() == text
    with pytest.raises(results_md.ResultsFileError, match=problem):  # refused before a long run starts
        results_md.check_results_file(path, ["train-speed"])


def test_unknown_sections_and_folders_are_refused(results_md, tmp_path):
    with pytest.raises(results_md.ResultsFileError, match="unknown results section.*no-such.*SECTIONS"):
        results_md.check_results_file(tmp_path / "R.md", ["no-such"])
    with pytest.raises(results_md.ResultsFileError, match="is a folder: pass a Markdown file"):
        results_md.check_results_file(tmp_path, ["model-cost"])
    with pytest.raises(results_md.ResultsFileError, match="holds a results marker"):
        results_md.replace_block("", "model-cost", "<!-- /results:model-cost -->")
    with pytest.raises(ValueError, match="registered twice"):
        results_md.register("model-cost", "other.py", "Again")


def test_the_command_is_the_one_a_user_pastes_from_the_repository(results_md):
    command = results_md.command_line(BENCHMARKS / "cpu_inference.py",
                                      ["--parity", f"{ROOT}/outputs/demo/model:{ROOT}/outputs/demo/coco/val.json",
                                       "--note", "two words", "--results-md", "benchmarks/RESULTS.md"])
    assert command == ("python benchmarks/cpu_inference.py --parity outputs/demo/model:outputs/demo/coco/val.json "
                       "--note 'two words' --results-md benchmarks/RESULTS.md")


def test_results_md_names_only_sections_a_script_writes():
    """Every block of benchmarks/RESULTS.md is one a script writes, and every section has its place there."""
    results_md = load_benchmark("results_md")
    text = (BENCHMARKS / "RESULTS.md").read_text()
    blocks = results_md.find_blocks(text, "benchmarks/RESULTS.md")
    assert set(blocks) == set(results_md.SECTIONS)
    for name, (start, end) in blocks.items():
        assert text[start:end].strip(), name  # at least the line saying how to fill it
    assert {section.script for section in results_md.SECTIONS.values()} == set(SCRIPTS)  # each writes one at least


def test_the_sections_the_scripts_write_are_the_registered_ones():
    """Read from each script: the names it writes are registered to it, and together they are all the sections."""
    results_md = load_benchmark("results_md")
    scripts = {name: load_benchmark(name) for name in ("demo_recipe", "runtime_peers", "server_load", "cpu_inference",
                                                       "predict_speed", "train_speed", "backbone_complexity",
                                                       "fresh_clone", "server_before_after")}
    parse = scripts["server_load"].build_parser().parse_args
    written = {
        "demo_recipe.py": [scripts["demo_recipe"].section_name(case) for case in scripts["demo_recipe"].CASES],
        "runtime_peers.py": [scripts["runtime_peers"].section_name(case) for case in scripts["runtime_peers"].CASES],
        "server_load.py": [scripts["server_load"].section_name(parse(["--model-dir", "m", *extra]))
                           for extra in ([], ["--workers", "1", "2"], ["--micro-batch", "1", "4"])],
        "cpu_inference.py": list(scripts["cpu_inference"].SECTIONS),
        "predict_speed.py": [scripts["predict_speed"].SPEED, scripts["predict_speed"].MEMORY],
        "train_speed.py": [scripts["train_speed"].SECTION],
        "backbone_complexity.py": [scripts["backbone_complexity"].SECTION],
        "fresh_clone.py": [scripts["fresh_clone"].SECTION],
        "server_before_after.py": [scripts["server_before_after"].SECTION],
    }
    assert set(written) == set(SCRIPTS)
    for script, names in written.items():
        assert len(set(names)) == len(names), names  # no two kinds of run share a section
        for name in names:
            assert results_md.SECTIONS[name].script == script, name
    assert sorted(n for names in written.values() for n in names) == sorted(results_md.SECTIONS)


def test_every_benchmark_script_takes_results_md_and_defaults_to_no_file():
    assert len(SCRIPTS) == 9, SCRIPTS
    for script in SCRIPTS:
        parser = load_benchmark(script[:-3]).build_parser()
        assert "--results-md" in parser.format_help(), script
        action = next(a for a in parser._actions if "--results-md" in a.option_strings)
        assert action.default is None, script  # tests and ad-hoc runs never touch the repository's file
