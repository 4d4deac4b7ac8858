"""Batch prediction speed (images/s, one and two processes) and its memory over many images.

Usage:
    python benchmarks/predict_speed.py --model-dir outputs/demo/model --images outputs/demo/coco/val.json
        [--count 120] [--r50-count 16] [--memory-count 10000] [--out outputs/bench/predict_speed.json]
        [--results-md benchmarks/RESULTS.md]

What it runs, each through ``scripts/predict.py`` as a user would (a fresh process, the model loaded
once, images decoded while the model runs):

- the model folder on ``--count`` images (the json's images repeated under other names), writing
  every format, and writing only ``coco``; in one process (all threads) and in two
  (``torchrun --nproc_per_node 2``, one thread each);
- resnet50_fpn at an 800 px short side (random weights tamed as in ``cpu_inference.py``, which keep
  the most detections, 100, so every image pastes and writes 100 masks: the worst case) on
  ``--r50-count`` synthetic 800x1067 images, writing ``coco,csv``;
- with ``--memory-count N``: the model folder on N images (``coco,csv``), the process's resident
  memory sampled every second: flat means the run holds nothing per image.

The fp32 sgemm rate is measured at the start and at the end, so the times can be scaled to another
machine (a drop at the end means the machine got busier). Run it with nothing else busy.
``--results-md`` writes the sections ``predict-speed`` and ``predict-memory`` (see
benchmarks/results_md.py), each only when this run measured it (``--skip-speed``: the memory alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.model_dir import write_model_dir
from maskrcnn_finetune.modeling import build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cpu_inference's helpers and results_md, beside this file
from cpu_inference import standard_spec, tame_random_weights, test_image  # noqa: E402
from results_md import Machine, add_results_md_argument, check_results_file, command_line, write_sections  # noqa: E402

SPEED, MEMORY = "predict-speed", "predict-memory"  # the results sections
MEMORY_CHECKPOINTS = (0.1, 0.2, 0.4, 0.6, 0.8)
"""Fractions of the memory run's images at which its table gives the resident memory (and at the end)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a trained model folder (make demo's)")
    parser.add_argument("--images", type=Path, required=True, help="a COCO json whose images are repeated")
    parser.add_argument("--count", type=int, default=120, help="images per run of the model folder")
    parser.add_argument("--r50-count", type=int, default=16, help="800x1067 images per resnet50_fpn run (0: skip)")
    parser.add_argument("--memory-count", type=int, default=0, help="images of the memory run (0: skip)")
    parser.add_argument("--memory-model-dir", type=Path, default=None,
                        help="the model of the memory run (default: --model-dir; a smaller one runs more images)")
    parser.add_argument("--memory-threshold", type=float, default=None, help="its score threshold")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory run")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "predict_speed.json")
    add_results_md_argument(parser)
    return parser


def model_label(model_dir: Path) -> str:
    """``outputs/demo/model (resnet18_fpn, 192 px)``: the folder, relative to the repository where it lies in it."""
    info = json.loads((model_dir / "model.json").read_text())
    path = model_dir.resolve()
    shown = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else model_dir.name
    return f"{shown} ({info['model']['backbone']}, {info['image_size']} px)"


def speed_table(rows: list[dict]) -> str:
    lines = ["| model | formats written | processes | images | images/s |", "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {row['model']} | {row['formats']} | {row['processes']} | {row['images']} | "
              f"{row['images_per_second']:.2f} |" for row in rows]
    return "\n".join(lines)


def memory_table(memory: dict) -> str:
    """The resident memory at a few points of the run, its peak, and the end."""
    samples, count = memory["memory_samples"], memory["images"]
    picked = []
    for fraction in MEMORY_CHECKPOINTS:
        sample = next((s for s in samples if s[1] >= fraction * count), None)
        if sample is not None and sample not in picked:
            picked.append(sample)
    lines = [f"{memory['model']}, {count} images, formats coco,csv, one process; {memory['images_per_second']:.2f} "
             f"images/s on average; peak resident memory {memory['rss_mb_peak']:.0f} MB.", "",
             "| images done | seconds | resident memory (MB) |", "| ---: | ---: | ---: |"]
    lines += [f"| {done:,} | {seconds:.0f} | {rss:.0f} |" for seconds, done, rss in picked]
    if samples:
        seconds, _, rss = samples[-1]
        lines.append(f"| {count:,} (last sample) | {seconds:.0f} | {rss:.0f} |")
    return "\n".join(lines)


def repeated_images(sources: list[Path], count: int, folder: Path) -> Path:
    """``count`` images named 00000.jpg... in subfolders of 1,000, hard links to the sources in turn."""
    for i in range(count):
        target = folder / f"{i // 1000:03d}" / f"{i:06d}{sources[i % len(sources)].suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(sources[i % len(sources)], target)
        except OSError:
            target.write_bytes(sources[i % len(sources)].read_bytes())
    return folder


def r50_model_dir(folder: Path, short: int = 800) -> tuple[Path, list[Path]]:
    """A resnet50_fpn model folder with tamed random weights, and its synthetic test images."""
    image = test_image(short)
    torch.manual_seed(0)
    spec = standard_spec("resnet50_fpn", short)
    model = build_model(spec, pretrained="none").eval()
    batch = model.transform([torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)])[0].tensors
    tame_random_weights(model.backbone, batch, [model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred])
    write_model_dir(folder / "r50", model, spec, score_threshold=0.05)
    paths = []
    for seed in range(4):
        path = folder / "r50_images" / f"scene{seed}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test_image(short, seed=seed)).save(path)
        paths.append(path)
    return folder / "r50", paths


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB (Linux /proc)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def run_predict(model_dir: Path, images: Path, out: Path, formats: str, processes: int,
                threshold: float | None = None, sample_memory: bool = False) -> dict:
    command = [str(ROOT / "scripts" / "predict.py"), str(images), "--model-dir", str(model_dir),
               "--output-dir", str(out), "--formats", formats, "--device", "cpu", "--workers", "1"]
    if threshold is not None:
        command += ["--threshold", str(threshold)]
    env = dict(os.environ)
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", "29531", *command]
        env["OMP_NUM_THREADS"] = "1"
    else:
        command = [sys.executable, *command]
    samples = []
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sample_memory:
        def sample():
            start = time.perf_counter()
            while proc.poll() is None:
                done = len(list((out / ".records").rglob("*.json"))) if (out / ".records").is_dir() else 0
                samples.append((round(time.perf_counter() - start, 1), done, round(rss_mb(proc.pid), 1)))
                time.sleep(1.0)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    result = {"formats": formats, "processes": processes, "images": summary["predicted"],
              "seconds": summary["seconds"], "images_per_second": summary["images_per_second"]}
    if sample_memory:
        result["memory_samples"] = samples
    return result


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = ([] if args.skip_speed else [SPEED]) + ([MEMORY] if args.memory_count else [])
    if args.results_md:
        check_results_file(args.results_md, names)
    machine = Machine.measure()
    print(machine.line())
    coco = load_coco(args.images)
    sources = [coco.image_path(image) for image in coco.images]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = repeated_images(sources, args.count, tmp / "images")
        speed_runs = () if args.skip_speed else (("coco,labelme,masks,overlay,csv", 1), ("coco", 1),
                                                 ("coco,labelme,masks,overlay,csv", 2), ("coco", 2))
        for formats, processes in speed_runs:
            row = run_predict(args.model_dir, folder, tmp / f"out_{len(rows)}", formats, processes)
            row["model"] = model_label(args.model_dir)
            rows.append(row)
            print(row)
        if args.r50_count and not args.skip_speed:
            model_dir, r50_sources = r50_model_dir(tmp)
            r50_images = repeated_images(r50_sources, args.r50_count, tmp / "r50_inputs")
            for processes in (1, 2):
                row = run_predict(model_dir, r50_images, tmp / f"out_r50_{processes}", "coco,csv", processes)
                row["model"] = "resnet50_fpn, 800x1067, 100 detections per image"
                rows.append(row)
                print(row)
        memory = None
        if args.memory_count:
            folder = repeated_images(sources, args.memory_count, tmp / "many")
            model_dir = args.memory_model_dir or args.model_dir
            memory = run_predict(model_dir, folder, tmp / "out_many", "coco,csv", 1, threshold=args.memory_threshold,
                                 sample_memory=True)
            memory["model"] = model_label(model_dir) + (f", threshold {args.memory_threshold}"
                                                        if args.memory_threshold is not None else "")
            samples = memory["memory_samples"]
            after_first = next((s for s in samples if s[1] >= min(1000, args.memory_count // 10)), samples[-1])
            memory["rss_mb_after_first_images"] = after_first
            memory["rss_mb_peak"] = max(s[2] for s in samples)
            memory["rss_mb_last"] = samples[-1]
            print({k: v for k, v in memory.items() if k != "memory_samples"})
    machine.finish()
    result = {"machine": machine.to_dict(), "runs": rows, "memory": memory}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    tables = {}
    if rows:
        tables[SPEED] = speed_table(rows)
    if memory:
        tables[MEMORY] = memory_table(memory)
    print(machine.line())
    print("\n\n".join(tables.values()))
    print(f"written to {args.out}")
    if args.results_md:
        write_sections(args.results_md, tables, command_line(__file__, argv), machine)
        print(f"wrote the section(s) {', '.join(tables)} of {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
