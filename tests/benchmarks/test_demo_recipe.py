"""benchmarks/demo_recipe.py: each case is a section of its own (a run of one case refreshes that case only).

The script itself trains the demo preset on 100 images per case, minutes even when cut to a few
steps, so it is not run here; its table is checked on a row of the shape run_case returns.
"""

from __future__ import annotations

from benchmark_scripts import load_benchmark


def test_every_case_has_a_registered_section_and_its_table_says_what_ran():
    demo_recipe, results_md = load_benchmark("demo_recipe"), load_benchmark("results_md")
    names = [demo_recipe.section_name(case) for case in demo_recipe.CASES]
    assert names == ["demo-recipe-demo", "demo-recipe-wide", "demo-recipe-two-classes"]
    assert all(results_md.SECTIONS[name].script == "demo_recipe.py" for name in names)
    row = {"case": "two_classes", "images": 100, "size": "320x256", "classes": 2, "val_instances": 64,
           "test_instances": 417, "minutes": 4.26, "train_minutes": 4.14, "box_AP50": 0.9, "mask_AP50": 0.88,
           "mask_AP": 0.7, "training_said_mask_AP50": None, "test_mask_AP50": 0.91, "test_mask_AP": 0.72}
    table = demo_recipe.table(row, ["max_iter=600"])
    assert table.splitlines() == [
        "Case two_classes: 100 synthetic images of 320x256 px, 2 classes, split 80/20 (val: 64 instances); "
        "the 120 new images hold 417 instances. Training options: max_iter=600.", "",
        "| whole job (min) | training (min) | box AP50 | mask AP50 | mask AP | mask AP50 training reported "
        "| mask AP50 / AP on 120 new images |",
        "|---|---|---|---|---|---|---|",
        "| 4.3 | 4.1 | 0.900 | 0.880 | 0.700 | - | 0.910 / 0.720 |"]
