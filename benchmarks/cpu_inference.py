"""CPU latency of every backbone at 512 and 800 px, against plain eager fp32 and detectron2, with the floor.

Usage:
    python benchmarks/cpu_inference.py [--backbones resnet50_fpn ...] [--sizes 512 800] [--runs 5]
        [--parity MODEL_DIR:COCO_JSON ...] [--out outputs/bench/cpu_inference.json]
        [--plot outputs/bench/cpu_latency.png] [--results-md benchmarks/RESULTS.md]

    make bench      # this and the other inference benchmarks, into benchmarks/RESULTS.md

For each backbone and short side, one model with the standard heads (random weights: no
download here) runs on the same synthetic image (short side x 4/3), after ``--warmup`` calls,
``--runs`` times:

- ``kit``: the kit's Predictor with its CPU default (the fast path: see maskrcnn_finetune/predictor.py);
- ``eager``: the same weights as a plain torchvision Mask R-CNN in fp32 (``model([tensor])``);
- ``detectron2``: detectron2's ``DefaultPredictor`` on the same architecture (its own random
  weights: detectron2 cannot load torchvision's), for ``--d2-backbones`` when detectron2 is installed.

Both the kit and eager use torchvision's score threshold of 0.05, and the random weights are
tamed (see :func:`tame_random_weights`) so that every path keeps the most detections (100) and
computes and pastes 100 masks: the worst case, the one the eager figures of the issue were
taken in. With a trained model and the usual threshold of
0.5 the kit computes masks only for the instances it returns, and is faster still.

The floor is the model's multiply-adds (torch's FLOP counter, see
maskrcnn_finetune/modeling/complexity.py) over this machine's fp32 sgemm rate, measured in the
same run; each latency is also given as a multiple of it.

``--parity MODEL_DIR:COCO_JSON`` checks the fast path against fp32 on a trained model folder and
the images of a COCO json (see maskrcnn_finetune/parity.py): at the model's own input size and,
with ``--parity-sizes``, at other short sides (the model's resize and anchors scaled to it, the
images scaled up so the objects grow with them).

``--results-md`` writes the sections ``cpu-latency``, ``cpu-speed-sources`` and ``cpu-parity``
(see benchmarks/results_md.py), each only when this run measured it: ``--backbones`` with no name
and ``--parity ...`` refreshes the parity section alone.

Run it with nothing else busy on the machine: timings on a shared CPU mean little.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm


from maskrcnn_finetune.data.coco import load_coco
from maskrcnn_finetune.data.images import load_rgb
from maskrcnn_finetune.data.synthetic import make_synthetic
from maskrcnn_finetune.modeling import BACKBONES, ModelSpec, build_model
from maskrcnn_finetune.modeling.complexity import count_gmacs
from maskrcnn_finetune.modeling.maskrcnn import default_anchor_sizes
from maskrcnn_finetune.parity import compare_runs
from maskrcnn_finetune.predictor import InferenceOptions, Predictor
from maskrcnn_finetune.timing import measure_latency

sys.path.insert(0, str(Path(__file__).resolve().parent))  # results_md, beside this file
from results_md import Machine, add_results_md_argument, check_results_file, command_line, write_sections  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("cpu-latency", "cpu-speed-sources", "cpu-parity")
THRESHOLD = 0.05  # torchvision's own box_score_thresh: the eager path's detections


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="*", default=sorted(BACKBONES), choices=sorted(BACKBONES),
                        help="backbones to time (none: only the parity checks)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 800], help="short sides in pixels")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument("--d2-backbones", nargs="*", default=["resnet50_fpn"],
                        help="backbones also timed through detectron2's DefaultPredictor (when installed)")
    parser.add_argument("--typical-instances", type=int, default=10,
                        help="also time the kit returning this many instances (threshold at that score)")
    parser.add_argument("--ablation", default="resnet50_fpn:800",
                        help="BACKBONE:SIZE where each part of the fast path is timed on its own ('' for none)")
    parser.add_argument("--parity", nargs="*", default=[], metavar="MODEL_DIR:COCO_JSON",
                        help="trained model folders to check the fast path on, with the images of a COCO json")
    parser.add_argument("--parity-sizes", nargs="*", type=int, default=[800],
                        help="short sides to check parity at besides each model's own")
    parser.add_argument("--parity-images", type=int, default=20, help="images per parity check")
    parser.add_argument("--parity-threshold", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "cpu_inference.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "outputs" / "bench" / "cpu_latency.png",
                        help="the latency plot (shown in the cpu-latency section when it lies beside --results-md)")
    add_results_md_argument(parser)
    return parser


def test_image(short: int, seed: int = 7) -> np.ndarray:
    """A deterministic synthetic scene of exactly ``short x round(short * 4 / 3)`` pixels."""
    width = int(round(short * 4 / 3))
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic(tmp, 1, seed=seed, image_size=(width, short))
        image = Image.open(next(Path(tmp).glob("*.jpg"))).convert("RGB")
        return np.array(image.resize((width, short), Image.BILINEAR))


def standard_spec(backbone: str, short: int) -> ModelSpec:
    """The backbone with torchvision's standard heads, resizing to ``short`` like training at that size does."""
    return ModelSpec(backbone, ["object"], min_size=short, max_size=int(round(short * 1333 / 800)),
                     anchor_sizes=default_anchor_sizes(short))


@torch.no_grad()
def tame_random_weights(backbone: torch.nn.Module, batch: torch.Tensor, box_layers: list[torch.nn.Module]) -> None:
    """Random weights that behave like trained ones where it matters for timing: 100 detections.

    Untrained, a deep backbone's features grow to ~1e5 (BatchNorm with unit statistics), the
    scores saturate at 0 or 1, and random box offsets send every box to the image's edges, where
    NMS merges them: R-101 kept no detections at all. So the BatchNorm statistics are taken from
    the test image (one pass in training mode) and the box offset layers are zeroed (boxes =
    anchors and proposals). The amount of work does not depend on the values.
    """
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration pass
    backbone.train()
    backbone(batch)
    backbone.eval()
    for layer in box_layers:
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)


def eager_callable(model: torch.nn.Module):
    """Plain torchvision inference in fp32: what a user of torchvision alone would write."""
    def run(image: np.ndarray):
        with torch.inference_mode():
            return model([torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)])

    return run


def detectron2_callable(backbone: str, short: int, image: np.ndarray):
    """detectron2's DefaultPredictor on the same architecture, or ``None`` without detectron2."""
    from maskrcnn_finetune.modeling.detectron2 import detectron2_available

    if not detectron2_available():
        return None
    from detectron2.engine import DefaultPredictor

    from maskrcnn_finetune.modeling.detectron2.model_config import build_config

    cfg = build_config(standard_spec(backbone, short)).clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = THRESHOLD
    if "RESNETS" in cfg.MODEL:
        cfg.MODEL.RESNETS.NORM = "BN"  # FrozenBN's statistics cannot be taken from an image (see tame_random_weights)
    for family in ("MOBILENETV2", "VOVNET"):
        if family in cfg.MODEL:
            cfg.MODEL[family].PRETRAINED = False
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    model = predictor.model
    bgr = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1).float()
    tame_random_weights(model.backbone, model.preprocess_image([{"image": bgr}]).tensor,
                        [model.proposal_generator.rpn_head.anchor_deltas, model.roi_heads.box_predictor.bbox_pred])
    return lambda image: predictor(np.ascontiguousarray(image[:, :, ::-1]))  # DefaultPredictor takes BGR


def detections(output) -> int:
    if isinstance(output, list):
        return len(output[0]["scores"])
    if isinstance(output, dict):  # detectron2
        return len(output["instances"])
    return len(output)


def time_it(fn, image, warmup: int, runs: int) -> dict:
    result = measure_latency(fn, [image], warmup=warmup, runs=runs)
    result["detections"] = detections(fn(image))
    return result


def latency_rows(args, gflops: float) -> tuple[list[dict], list[dict]]:
    rows, ablation = [], []
    ablate = tuple(args.ablation.split(":")) if args.ablation else None
    jobs = [(b, s) for b in args.backbones for s in args.sizes]
    for backbone, short in tqdm(jobs, desc="backbone x size"):
        image = test_image(short)
        torch.manual_seed(0)
        spec = standard_spec(backbone, short)
        model = build_model(spec, pretrained="none").eval()
        batch = model.transform([torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)])[0].tensors
        tame_random_weights(model.backbone, batch, [model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred])
        gmacs = count_gmacs(model, image.shape[0], image.shape[1])
        floor_ms = gmacs * 2 / gflops * 1000
        row = {"backbone": backbone, "short_side": short, "input": f"{image.shape[0]}x{image.shape[1]}",
               "gmacs": round(gmacs, 1), "floor_ms": round(floor_ms, 1)}
        eager_model = copy.deepcopy(model)
        row["eager"] = time_it(eager_callable(eager_model), image, args.warmup, args.runs)
        kit = Predictor(model, spec, "cpu", score_threshold=THRESHOLD)
        row["kit_mode"] = kit.describe_mode()
        row["kit"] = time_it(kit, image, args.warmup, args.runs)
        # a trained model at threshold 0.5 returns a handful of instances, not 100: the same model
        # with the threshold set at the score of the n-th best detection
        scores = np.sort(kit(image).scores)[::-1]
        if len(scores) >= args.typical_instances:
            cut = float(scores[args.typical_instances - 1])
            row["kit_typical"] = time_it(lambda im: kit(im, threshold=cut), image, args.warmup, args.runs)
            row["kit_typical"]["detections"] = len(kit(image, threshold=cut))
        if backbone in args.d2_backbones:
            d2 = detectron2_callable(backbone, short, image)
            if d2 is not None:
                row["detectron2"] = time_it(d2, image, args.warmup, args.runs)
        if ablate == (backbone, str(short)):
            for name, options in (("eager fp32 through the Predictor", dict(fast=False)),
                                  ("+ fast path in fp32: channels-last, boolean pasting", dict(fast=True, bf16=False)),
                                  ("+ bf16 (the default)", dict(fast=True, bf16=True))):
                predictor = Predictor(copy.deepcopy(eager_model), spec, "cpu", score_threshold=THRESHOLD,
                                      options=InferenceOptions(**options))
                ablation.append({"variant": name, **time_it(predictor, image, args.warmup, args.runs)})
        rows.append(row)
        tqdm.write(f"{backbone} {short}: eager {row['eager']['median_ms']:.0f} ms, kit {row['kit']['median_ms']:.0f} ms"
                   + (f", detectron2 {row['detectron2']['median_ms']:.0f} ms" if "detectron2" in row else ""))
    return rows, ablation


def load_images(coco_json: Path, limit: int) -> list[np.ndarray]:
    """The first ``limit`` images of a COCO json (by id), as RGB arrays."""
    coco = load_coco(coco_json)
    return [load_rgb(coco.image_path(entry)) for entry in coco.images[:limit]]


def upscale(image: np.ndarray, short: int) -> np.ndarray:
    """``image`` resized so its short side is ``short`` pixels."""
    factor = short / min(image.shape[:2])
    size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    return np.array(Image.fromarray(image).resize(size, Image.BILINEAR))


def resized_model_dir(model_dir: Path, short: int, out_dir: Path) -> Path:
    """A copy of a model folder that resizes images to a ``short`` px short side, its anchors scaled with it.

    The weights do not depend on the input size: the same network then sees the objects as it
    saw them in training, only bigger (or smaller).
    """
    from maskrcnn_finetune.model_dir import MODEL_JSON, WEIGHTS

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_dir / WEIGHTS, out_dir / WEIGHTS)
    info = json.loads((model_dir / MODEL_JSON).read_text())
    spec = info["model"]
    scale = short / spec["min_size"]
    spec.update(min_size=short, max_size=int(round(spec["max_size"] * scale)),
                anchor_sizes=[int(round(s * scale)) for s in spec["anchor_sizes"]])
    info["resized_from"] = str(model_dir)
    (out_dir / MODEL_JSON).write_text(json.dumps(info, indent=2))
    return out_dir


def parity_rows(args, work: Path) -> list[dict]:
    rows = []
    for item in args.parity:
        model_dir, _, coco_json = item.rpartition(":")
        model_dir, coco_json = Path(model_dir), Path(coco_json)
        info = json.loads((model_dir / "model.json").read_text())
        own = int(info["model"]["min_size"])
        images = load_images(coco_json, args.parity_images)
        for short in [None] + [s for s in args.parity_sizes if s != own]:
            scaled = images
            if short is not None:
                # the objects grow with the image: the model sees them as it would at its own size, only bigger
                scaled = [upscale(im, short) for im in images]
            folder = model_dir if short is None else resized_model_dir(model_dir, short, work / f"{model_dir.name}_{short}")
            eager = Predictor.from_dir(folder, device="cpu", fast=False)
            fast = Predictor.from_dir(folder, device="cpu")
            ref = [eager(im, threshold=args.parity_threshold) for im in tqdm(scaled, desc="parity fp32", leave=False)]
            cand = [fast(im, threshold=args.parity_threshold) for im in tqdm(scaled, desc="parity fast", leave=False)]
            report = compare_runs(ref, cand, args.parity_threshold)
            t_eager = measure_latency(eager, scaled[:3], warmup=1, runs=3)
            t_fast = measure_latency(fast, scaled[:3], warmup=1, runs=3)
            rows.append({"model": str(model_dir), "backbone": info["model"]["backbone"],
                         "model_input": own if short is None else short,
                         "image": f"short side {min(scaled[0].shape[:2])}", "images": len(scaled),
                         "instances_fp32": sum(len(r) for r in ref), "instances_fast": sum(len(r) for r in cand),
                         "eager_ms": round(t_eager["median_ms"], 1), "kit_ms": round(t_fast["median_ms"], 1),
                         "mode": fast.describe_mode(), **report.to_dict()})
            tqdm.write(f"parity {model_dir.name} at {rows[-1]['model_input']} px: {report.describe()}")
    return rows


def ms(entry: dict) -> str:
    return f"{entry['median_ms']:.0f} ({entry['min_ms']:.0f}-{entry['max_ms']:.0f})"


def sections(result: dict, plot_link: str | None = None) -> dict[str, str]:
    """The Markdown tables of the run, by results section: only those the run measured."""
    tables = {}
    if result["latency"]:
        lines = [f"Median of {result['runs']} runs after {result['warmup']} warm-up calls (min-max in brackets), "
                 "ms per image.", "",
                 "| backbone | input | GMACs | fp32 floor (ms) | eager fp32 | kit (default) | detectron2 | kit / eager "
                 f"| eager / floor | kit / floor | detections | kit, {result.get('typical_instances', 10)} instances kept |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["latency"]:
            d2 = ms(r["detectron2"]) if "detectron2" in r else "-"
            lines.append(f"| {r['backbone']} | {r['input']} | {r['gmacs']:.0f} | {r['floor_ms']:.0f} | {ms(r['eager'])} | "
                         f"{ms(r['kit'])} | {d2} | {r['kit']['median_ms'] / r['eager']['median_ms']:.2f} "
                         f"({r['eager']['median_ms'] / r['kit']['median_ms']:.1f}x faster) | "
                         f"{r['eager']['median_ms'] / r['floor_ms']:.2f} | {r['kit']['median_ms'] / r['floor_ms']:.2f} | "
                         f"{r['eager']['detections']} / {r['kit']['detections']}"
                         + (f" / {r['detectron2']['detections']}" if "detectron2" in r else "") + " | "
                         + (ms(r["kit_typical"]) if "kit_typical" in r else "-") + " |")
        if plot_link:
            lines += ["", f"![CPU latency per backbone]({plot_link})"]
        tables["cpu-latency"] = "\n".join(lines)
    if result["ablation"]:
        backbone, _, short = result["ablation_case"].partition(":")
        lines = [f"| {backbone} at a {short} px short side, 100 detections | ms (median, min-max) |", "|---|---|"]
        lines += [f"| {a['variant']} | {ms(a)} |" for a in result["ablation"]]
        tables["cpu-speed-sources"] = "\n".join(lines)
    if result["parity"]:
        lines = [f"Threshold {result['parity_threshold']}.", "",
                 "| model | backbone | model input | image | images | instances fp32 / fast | matched | missing | extra "
                 "| mask IoU: lowest / mean | pairs below 0.95 | largest score diff | eager ms | kit ms | verdict |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in result["parity"]:
            lines.append(f"| {Path(p['model']).parent.name}/{Path(p['model']).name} | {p['backbone']} | {p['model_input']} | "
                         f"{p['image']} | {p['images']} | {p['instances_fp32']} / {p['instances_fast']} | {p['matched']} | "
                         f"{p['missing']} | {p['extra']} | {p['min_mask_iou']:.3f} / {p['mean_mask_iou']:.3f} | "
                         f"{p['low_iou']} | {p['max_score_diff']:.3f} | "
                         f"{p['eager_ms']:.0f} | {p['kit_ms']:.0f} | {'match' if p['ok'] else 'DIFFER'} |")
        tables["cpu-parity"] = "\n".join(lines)
    return tables


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["latency"]
    sizes = sorted({r["short_side"] for r in rows})
    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, short in zip(axes[0], sizes):
        sub = {r["backbone"]: r for r in rows if r["short_side"] == short}
        x = np.arange(len(backbones))
        width = 0.27
        for k, (key, label) in enumerate((("eager", "eager fp32"), ("kit", "kit (default)"), ("detectron2", "detectron2"))):
            values = [sub[b][key]["median_ms"] / 1000 if b in sub and key in sub[b] else np.nan for b in backbones]
            if not np.all(np.isnan(values)):
                ax.bar(x + (k - 1) * width, values, width, label=label)
        floors = [sub[b]["floor_ms"] / 1000 if b in sub else np.nan for b in backbones]
        ax.scatter(x, floors, marker="_", s=400, color="black", label="fp32 floor", zorder=3)
        ax.set_xticks(x, [b.replace("_fpn", "") for b in backbones], rotation=30)
        ax.set_ylabel("seconds per image")
        ax.set_title(f"short side {short} px ({sub[backbones[0]]['input'] if backbones[0] in sub else ''})")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"Mask R-CNN on the CPU ({result['machine']['threads']} threads), 100 detections")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.results_md:
        check_results_file(args.results_md, SECTIONS)
    torch.manual_seed(0)
    machine = Machine.measure()
    print(machine.line())
    latency, ablation = latency_rows(args, machine.fp32_start)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"typical_instances": args.typical_instances, "runs": args.runs, "warmup": args.warmup, "threshold": THRESHOLD,
                  "latency": latency, "ablation": ablation, "ablation_case": args.ablation,
                  "parity": parity_rows(args, Path(tmp)), "parity_threshold": args.parity_threshold}
    result["machine"] = machine.finish().to_dict()  # a drop at the end means the machine got busier during the run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    plot_link = None
    if result["latency"]:
        plot(result, args.plot)
        if args.results_md and args.plot.resolve().is_relative_to(args.results_md.resolve().parent):
            plot_link = args.plot.resolve().relative_to(args.results_md.resolve().parent).as_posix()
    tables = sections(result, plot_link)
    print(machine.line())
    print("\n\n".join(tables.values()))
    print(f"wrote {args.out}" + (f" and {args.plot}" if result["latency"] else ""))
    for p in result["parity"]:
        if not p["ok"]:
            print(f"PARITY: {p['model']} at {p['model_input']} px: " + "; ".join(p["problems"][:3]))
    if args.results_md and tables:
        write_sections(args.results_md, tables, command_line(__file__, argv), machine)
        print(f"wrote the section(s) {', '.join(tables)} of {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
