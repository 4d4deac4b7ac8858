"""How long the demo job takes on this CPU, and what the saved model scores, on several datasets.

Usage:
    python benchmarks/demo_recipe.py [--work-dir outputs/bench_demo] [--cases demo wide two_classes]
                                     [--set max_iter=600 ...] [--results-md benchmarks/RESULTS.md]

Each case runs what ``make demo`` runs, with its own synthetic data set (seed, image size,
classes): make the labelme data, convert it with the kit's converter, train ``--preset demo``
from scratch, then score the saved model folder with ``scripts/evaluate.py`` on the val json.
The AP in the table is evaluate.py's, the number a user gets from the folder. The val split is 20
images, so the folder is also scored on 120 new images of the same kind (another seed; not timed). Times: the whole
job end to end, and training alone (its periodic and final evaluations included). The machine's
fp32 and bf16 matrix-multiply rates are measured before and after, so the times can be scaled
to another machine. The table is printed and written to ``WORK_DIR/demo_recipe.md``;
``--results-md`` writes each case as its own section (``demo-recipe-<case>``, see
benchmarks/results_md.py), so a run of one case refreshes that case only.
Run it on a quiet machine: it is a timing. ``--set`` overrides preset options (recipe trials).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]

from maskrcnn_finetune.data.convert import convert_labelme
from maskrcnn_finetune.data.synthetic import make_synthetic

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_md, beside this file
from results_md import Machine, add_results_md_argument, check_results_file, command_line, write_sections  # noqa: E402

CASES = {
    # what `make demo` trains on
    "demo": dict(images=100, seed=0, size=(320, 256), classes=("circle", "square", "triangle")),
    # larger images, other seed: the recipe is not tuned to one picture size
    "wide": dict(images=100, seed=11, size=(480, 360), classes=("circle", "square", "triangle")),
    # fewer classes, other seed
    "two_classes": dict(images=100, seed=23, size=(320, 256), classes=("circle", "triangle")),
}

TEST_IMAGES = 120
"""New images per case (another seed) that the saved model is also scored on: a val split of 20 images
holds few instances, each worth much AP."""


def section_name(case: str) -> str:
    """The results section of a case: ``demo-recipe-two-classes`` for ``two_classes``."""
    return "demo-recipe-" + case.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "bench_demo")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["demo"])
    parser.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE",
                        help="training flags to add, e.g. max_iter=600 (becomes --max-iter 600)")
    add_results_md_argument(parser)
    return parser


def _run(*args) -> None:
    subprocess.run([sys.executable, *map(str, args)], check=True)


def run_case(name: str, work_dir: Path, extra: list[str]) -> dict:
    case = CASES[name]
    root = work_dir / name
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    make_synthetic(root / "labelme", case["images"], seed=case["seed"], image_size=case["size"], classes=case["classes"])
    convert_labelme(root / "labelme", root / "coco", val_fraction=0.2, seed=0)
    train_start = time.perf_counter()
    _run(ROOT / "scripts" / "train.py", "--preset", "demo", "--resume", "--train-json", root / "coco" / "train.json",
         "--val-json", root / "coco" / "val.json", "--output-dir", root / "model", *extra)
    train_seconds = time.perf_counter() - train_start
    _run(ROOT / "scripts" / "evaluate.py", "--model-dir", root / "model", "--json", root / "coco" / "val.json",
         "--output", root / "evaluated.json")
    seconds = time.perf_counter() - start
    val = json.loads((root / "evaluated.json").read_text())["val"]
    # the val split is 20 images: a second opinion from many new images of the same kind (not timed)
    make_synthetic(root / "test_labelme", TEST_IMAGES, seed=case["seed"] + 1000, image_size=case["size"],
                   classes=case["classes"])
    convert_labelme(root / "test_labelme", root / "test_coco", val_fraction=0.0, seed=0)
    _run(ROOT / "scripts" / "evaluate.py", "--model-dir", root / "model", "--json", root / "test_coco" / "dataset.json",
         "--output", root / "tested.json")
    test = next(iter(json.loads((root / "tested.json").read_text()).values()))
    val_instances = len(json.loads((root / "coco" / "val.json").read_text())["annotations"])
    test_instances = len(json.loads((root / "test_coco" / "dataset.json").read_text())["annotations"])
    during_training = json.loads((root / "model" / "model.json").read_text())["metrics"]
    return {"case": name, "images": case["images"], "size": "x".join(map(str, case["size"])),
            "classes": len(case["classes"]), "val_instances": val_instances, "test_instances": test_instances,
            "minutes": seconds / 60, "train_minutes": train_seconds / 60,
            "box_AP50": val["bbox"]["AP50"], "mask_AP50": val["segm"]["AP50"], "mask_AP": val["segm"]["AP"],
            "training_said_mask_AP50": during_training.get("segm_AP50"), "test_mask_AP50": test["segm"]["AP50"],
            "test_mask_AP": test["segm"]["AP"]}


def table(r: dict, options: list[str]) -> str:
    """One case's row, with what its data set was."""
    said = "-" if r["training_said_mask_AP50"] is None else f"{r['training_said_mask_AP50']:.3f}"
    lines = [f"Case {r['case']}: {r['images']} synthetic images of {r['size']} px, {r['classes']} classes, split 80/20 "
             f"(val: {r['val_instances']} instances); the {TEST_IMAGES} new images hold {r['test_instances']} instances."
             + (f" Training options: {' '.join(options)}." if options else ""), "",
             "| whole job (min) | training (min) | box AP50 | mask AP50 | mask AP | mask AP50 training reported "
             f"| mask AP50 / AP on {TEST_IMAGES} new images |",
             "|---|---|---|---|---|---|---|",
             f"| {r['minutes']:.1f} | {r['train_minutes']:.1f} | {r['box_AP50']:.3f} | {r['mask_AP50']:.3f} | "
             f"{r['mask_AP']:.3f} | {said} | {r['test_mask_AP50']:.3f} / {r['test_mask_AP']:.3f} |"]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    extra = []
    for item in args.set:
        key, _, value = item.partition("=")
        extra += [f"--{key.replace('_', '-')}", *value.split(",")]
    if args.results_md:
        check_results_file(args.results_md, [section_name(case) for case in args.cases])
    machine = Machine.measure()
    print(machine.line())
    rows = [run_case(name, args.work_dir, extra) for name in tqdm(args.cases, desc="cases")]
    machine.finish()
    tables = {section_name(r["case"]): table(r, args.set) for r in rows}
    print(machine.line())
    print("\n\n".join(tables.values()))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "demo_recipe.md").write_text("\n\n".join(tables.values()) + "\n")
    (args.work_dir / "demo_recipe.json").write_text(json.dumps({"machine": machine.to_dict(), "rows": rows}, indent=2))
    if args.results_md:
        write_sections(args.results_md, tables, command_line(__file__, argv), machine)
        print(f"wrote the section(s) {', '.join(tables)} of {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
