"""Does ``--preset demo`` reach mask AP50 >= 0.8 within 10 minutes on this CPU, on several datasets?

Usage:
    python benchmarks/demo_recipe.py [--work-dir outputs/bench_demo] [--cases demo wide two_classes]

Each case makes a synthetic labelme dataset (its own seed, image size and classes), converts it
with the kit's converter, trains ``--preset demo`` from scratch, and reads the val metrics the
training wrote. Wall time covers training and its evaluations, not data generation. The table
is printed and written to ``WORK_DIR/demo_recipe.md``; copy it into benchmarks/RESULTS.md.
Run it on a quiet machine: it is a timing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskrcnn_finetune.data.convert import convert_labelme  # noqa: E402
from maskrcnn_finetune.data.synthetic import make_synthetic  # noqa: E402

CASES = {
    # what `make demo` trains on
    "demo": dict(n_images=60, seed=0, image_size=(320, 256), classes=("circle", "square", "triangle")),
    # larger images, other seed: the recipe is not tuned to one picture size
    "wide": dict(n_images=60, seed=11, image_size=(480, 360), classes=("circle", "square", "triangle")),
    # fewer classes, other seed
    "two_classes": dict(n_images=60, seed=23, image_size=(320, 256), classes=("circle", "triangle")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "outputs" / "bench_demo")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["demo"])
    return parser


def run_case(name: str, work_dir: Path) -> dict:
    case = CASES[name]
    root = work_dir / name
    make_synthetic(root / "labelme", case["n_images"], seed=case["seed"], image_size=case["image_size"],
                   classes=case["classes"])
    jsons = convert_labelme(root / "labelme", root / "coco", val_fraction=0.2, seed=0).json_paths
    model_dir = root / "model"
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--preset", "demo", "--resume",
                    "--train-json", str(jsons["train"]), "--val-json", str(jsons["val"]),
                    "--output-dir", str(model_dir)], check=True)
    seconds = time.perf_counter() - start
    val = json.loads((model_dir / "metrics.json").read_text())["val"]
    return {"case": name, "images": case["n_images"], "size": "x".join(map(str, case["image_size"])),
            "classes": len(case["classes"]), "minutes": seconds / 60,
            "box_AP50": val["bbox"]["AP50"], "mask_AP50": val["segm"]["AP50"], "mask_AP": val["segm"]["AP"]}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    rows = [run_case(name, args.work_dir) for name in tqdm(args.cases, desc="cases")]
    lines = ["| case | images (80/20 split) | image size | classes | train + eval (min) | box AP50 | mask AP50 | mask AP |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['images']} | {r['size']} | {r['classes']} | {r['minutes']:.1f} | "
              f"{r['box_AP50']:.3f} | {r['mask_AP50']:.3f} | {r['mask_AP']:.3f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "demo_recipe.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
