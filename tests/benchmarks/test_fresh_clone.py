"""benchmarks/fresh_clone.py: what it reads from the two commands' output, and the table it writes.

The run itself (a clone, make demo, make test) takes as long as those commands, so the suite does not
run it; its parts that read outputs are tested here on real pytest and evaluate.py output forms.
"""

from __future__ import annotations

from benchmark_scripts import load_benchmark


def test_reads_pytest_closing_line_from_make_output():
    fresh_clone = load_benchmark("fresh_clone")
    output = ("tests/test_x.py ....\n"
              "=========================== short test summary info ============================\n"
              "SKIPPED [1] tests/test_y.py:3: no GPU\n"
              "================= 431 passed, 1 skipped, 3 warnings in 612.40s (0:10:12) =================\n"
              "make: Leaving directory '/tmp/x'\n")
    assert fresh_clone.pytest_summary(output) == "431 passed, 1 skipped, 3 warnings"
    assert fresh_clone.pytest_summary("make: *** [Makefile:61: test] Error 1\n") == ""


def test_folder_bytes_counts_files_once_and_not_through_links(tmp_path):
    fresh_clone = load_benchmark("fresh_clone")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"1" * 1000)
    (tmp_path / "y.bin").write_bytes(b"2" * 24)
    (tmp_path / "link.bin").symlink_to(tmp_path / "a" / "x.bin")
    assert fresh_clone.folder_bytes(tmp_path) == 1024


def test_the_table_gives_each_step_and_the_demo_total():
    fresh_clone = load_benchmark("fresh_clone")
    table = fresh_clone.results_table({"venv_s": 90, "venv_bytes": 5.6e9, "demo_s": 300, "mask_ap50": 0.9012,
                                       "box_ap50": 0.8877, "test_s": 720, "tests": "431 passed",
                                       "test_venv_bytes": 6.4e9})
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert [row[2] for row in rows] == ["1.5", "5.0", "6.5", "12.0"]
    assert "val mask AP50 0.901" in table and "`.venv` 5.6 GB" in table and "431 passed" in table


def test_the_steps_run_in_a_users_environment_not_in_make_bench_clones(monkeypatch):
    """make bench-clone runs the clone's make demo and make test: its own make and virtualenv stay out of them."""
    fresh_clone = load_benchmark("fresh_clone")
    for name, value in {"MAKEFLAGS": "w", "MAKELEVEL": "1", "RESULTS_MD_MAKE_TARGET": "bench-clone",
                        "VIRTUAL_ENV": "/elsewhere/.venv", "HOME_FOR_TEST": "kept"}.items():
        monkeypatch.setenv(name, value)
    env = fresh_clone.users_environment()
    assert not {"MAKEFLAGS", "MAKELEVEL", "RESULTS_MD_MAKE_TARGET", "VIRTUAL_ENV"} & set(env)
    assert env["HOME_FOR_TEST"] == "kept" and env["PATH"] == fresh_clone.os.environ["PATH"]
