"""The kit against the runtimes a CPU user reaches for, timed alternately, with parity on the same weights.

Usage:
    python benchmarks/runtime_peers.py [--cases demo r50-800 trained] [--demo-dir outputs/demo/model]
        [--trained-dir outputs/r50_demo/model] [--trained-size 800] [--trained-images 4]
        [--rounds 7] [--compile] [--out outputs/bench/runtime_peers.json] [--results-md benchmarks/RESULTS.md]

Cases (each path runs the same weights on the same images):

- ``demo``: the trained demo model folder on its own val images, at its own input size;
- ``r50-800``: ResNet-50-FPN with torchvision's standard heads at an 800 px short side (1067x800),
  random weights tamed as in ``cpu_inference.py`` (100 detections, 100 masks), one image;
- ``trained``: a trained model folder (``--trained-dir``: yours, or e.g. a ResNet-50-FPN trained on the
  demo data with ``make demo DEMO_DIR=outputs/r50_demo DEMO_SERVE=0 DEMO_TRAIN_ARGS="--backbone
  resnet50_fpn"``) run at a ``--trained-size`` (800) px short side: a copy of the folder whose input
  size and anchors are scaled to that size, on the first ``--trained-images`` images (at most 12) of
  its val set scaled up with it (the objects grow with the image, so the network sees them as in
  training). Trained weights are what parity is about: random ones make near-tied scores that any
  rounding reorders.

Paths, all behind the same Predictor interface (RGB array in, instances out):

- ``eager fp32``: the plain torchvision model (``fast=False``): the parity reference;
- ``kit (torch)``: the kit's default CPU path;
- ``kit (openvino)``: the kit's ``--runtime openvino`` (the backbone converted by OpenVINO from its
  ``torch.export`` program);
- ``kit (openvino int8)``: ``--runtime openvino-int8`` (the backbone quantised by NNCF, calibrated on the
  model's first 32 training images, or for ``r50-800`` on its one image), shown even where the
  gate would refuse it;
- ``kit (.pt2)``: the kit's export (``scripts/export.py``: the parts as ``torch.export`` programs) loaded
  from its folder, as the server loads it (the fast CPU path around the programs);
- ``onnxruntime``: the kit's ONNX export (``scripts/export.py --format onnx``: the same programs through
  torch's ONNX exporter), each part's graph in ONNX Runtime, the Python between them the kit's;
- ``openvino on the onnx``: the same ONNX file, each part's graph compiled by OpenVINO (f32);
- ``torch.compile`` (with ``--compile``): inductor on the eager model (the first call compiles, minutes);
- ``default (auto: ...)``: what the server and batch prediction run unless told otherwise
  (``--runtime auto``: the fastest of torch, OpenVINO and int8 that passes its check), as it chose here.

Where the case's model folder has its val json here (``demo``, ``trained``), int8 and the default path
are also judged as ``auto`` judges int8: their val mask AP and box AP (scripts/evaluate.py's COCOeval on
the model's own val json) against eager fp32's. The start-up cost of the default is measured on a copy of
the folder with no cached decision: loading torch, ``auto`` deciding (first start), ``auto`` reading the
decision it cached (every later start).

Every path is timed once per round, in turn, for ``--rounds`` rounds after one warm-up each (a
machine that drifts during the run affects all paths alike); the table gives the median per image
and the ratio to eager. Parity is each path's predictions against eager fp32 on the same images
(maskrcnn_finetune/parity.py: same instances, mask IoU >= 0.95, scores within 0.05); where neither
run finds an instance at the threshold, parity is "not judged", since empty answers always agree. The fp32
sgemm rate is measured before and after, the bf16 rate once. Run it with nothing else busy.
``--results-md`` writes each case as its own section (``runtime-peers-demo``, ``runtime-peers-r50-800``,
``runtime-peers-trained``; see benchmarks/results_md.py), so a run of one case refreshes that case only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_inference import standard_spec, tame_random_weights, test_image  # noqa: E402

from maskrcnn_finetune.ap_check import compare_ap, model_val_json  # noqa: E402
from maskrcnn_finetune.data.coco import load_coco  # noqa: E402
from maskrcnn_finetune.evaluate import predict_dataset  # noqa: E402
from maskrcnn_finetune.loading import calibration_images, load_predictor  # noqa: E402
from maskrcnn_finetune.model_dir import read_model_info, write_model_dir  # noqa: E402
from maskrcnn_finetune.model_format import MODEL_JSON, WEIGHTS  # noqa: E402
from maskrcnn_finetune.modeling import build_model  # noqa: E402
from maskrcnn_finetune.parity import (CHECK_VAL_IMAGES, SCORE_TOLERANCE, check_images, compare_runs,  # noqa: E402
                                      model_val_images)
from maskrcnn_finetune.predictor import Predictor  # noqa: E402
from maskrcnn_finetune.runtime_cache import CACHE_ENV, CACHE_FOLDER, CACHE_ROOT_ENV  # noqa: E402
from maskrcnn_finetune.timing import alternating_rounds  # noqa: E402
from results_md import Machine, add_results_md_argument, check_results_file, command_line, write_sections  # noqa: E402

CASES = ("demo", "r50-800", "trained")


def section_name(case: str) -> str:
    """The results section of a case."""
    return f"runtime-peers-{case}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["demo", "r50-800"], choices=CASES)
    parser.add_argument("--demo-dir", type=Path, default=ROOT / "outputs" / "demo" / "model")
    parser.add_argument("--trained-dir", type=Path, default=ROOT / "outputs" / "r50_demo" / "model",
                        help="the model folder of the trained case")
    parser.add_argument("--trained-size", type=int, default=800, help="the trained case's short side in pixels")
    parser.add_argument("--trained-images", type=int, default=4,
                        help=f"val images of the trained case (at most {CHECK_VAL_IMAGES}, the export check's)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (every path once per round)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (compiling takes minutes)")
    parser.add_argument("--work-dir", type=Path, default=None, help="model folders and exports (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "runtime_peers.json")
    add_results_md_argument(parser)
    return parser


class OpenVINOSession:
    """One part's ONNX graph compiled by OpenVINO (f32), with the two methods of an ONNX Runtime session that the
    kit's ONNX adapter calls (``get_inputs``, ``run``)."""

    def __init__(self, graph: bytes) -> None:
        from types import SimpleNamespace

        from maskrcnn_finetune.modeling.openvino_backbone import openvino_core  # one Core per process (see there)

        core = openvino_core()
        self.compiled = core.compile_model(core.read_model(graph), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.inputs = [SimpleNamespace(name=i.get_any_name()) for i in self.compiled.inputs]

    def get_inputs(self) -> list:
        return self.inputs

    def run(self, _outputs, feeds: dict) -> list[np.ndarray]:
        out = self.compiled([feeds[i.name] for i in self.inputs])
        return [out[k] for k in range(len(self.compiled.outputs))]


def r50_folder(work: Path) -> tuple[Path, list[np.ndarray]]:
    """ResNet-50-FPN at 800 px with tamed random weights, written as a model folder; its one image."""
    image = test_image(800)
    torch.manual_seed(0)
    spec = standard_spec("resnet50_fpn", 800)
    model = build_model(spec, pretrained="none").eval()
    batch = model.transform([torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)])[0].tensors
    tame_random_weights(model.backbone, batch, [model.rpn.head.bbox_pred, model.roi_heads.box_predictor.bbox_pred])
    folder = work / "r50_800"
    write_model_dir(folder, model, spec, score_threshold=0.05)
    return folder, [image]


def trained_folder_at(model_dir: Path, short: int, count: int, work: Path) -> tuple[Path, list[np.ndarray]]:
    """``model_dir`` resized to a ``short`` px input (anchors scaled), and its first ``count`` val images scaled up."""
    from cpu_inference import resized_model_dir, upscale

    from maskrcnn_finetune.data.images import load_rgb

    if not (model_dir / "model.json").is_file():
        raise SystemExit(f"{model_dir} is not a model folder (no model.json): pass --trained-dir MODEL_DIR, or train "
                         "one, e.g. make demo DEMO_DIR=outputs/r50_demo DEMO_SERVE=0 "
                         "DEMO_TRAIN_ARGS=\"--backbone resnet50_fpn\"")
    if not 1 <= count <= CHECK_VAL_IMAGES:
        raise SystemExit(f"--trained-images must be 1 to {CHECK_VAL_IMAGES}, got {count}")
    own = model_val_images(read_model_info(model_dir))[:count]
    if not own:
        raise SystemExit(f"the val images of {model_dir} cannot be read from here (model.json's training.val_json): "
                         "the trained case needs a model trained with --val-json, with its images in place")
    folder = resized_model_dir(model_dir, short, work / f"{model_dir.parent.name}_{short}")
    return folder, [upscale(load_rgb(path), short) for path in own]


def build_paths(model_dir: Path, images, work: Path, with_compile: bool) -> dict[str, Predictor]:
    from maskrcnn_finetune.export import ExportParityError, export_onnx, export_pt2, load_exported_predictor
    from maskrcnn_finetune.export.runtimes import onnx_parts

    paths = {"eager fp32": Predictor.from_dir(model_dir, fast=False), "kit (torch)": Predictor.from_dir(model_dir)}
    paths["kit (openvino)"] = Predictor.from_dir(model_dir, runtime="openvino")
    if paths["kit (torch)"].bf16:  # also the fp32 forms, what a CPU without bf16 units runs
        paths["kit (torch, fp32)"] = Predictor.from_dir(model_dir, bf16=False)
        paths["kit (openvino, f32)"] = Predictor.from_dir(model_dir, bf16=False, runtime="openvino")
    info = read_model_info(model_dir)
    has_train = Path((info.get("training") or {}).get("train_json") or "/nonexistent").is_file()
    # int8: calibrated on the model's training images (the demo) or, without them, on the timed image itself
    paths["kit (openvino int8)"] = Predictor.from_dir(model_dir, runtime="openvino-int8",
                                                      calibration=calibration_images(info, None if has_train else images))
    if with_compile:
        compiled = Predictor.from_dir(model_dir, fast=False)
        compiled.model = torch.compile(compiled.model)
        paths["torch.compile"] = compiled
    records, out = {}, work / "exports" / f"{model_dir.parent.name}_{model_dir.name}"  # a folder per case
    for fmt, export in (("pt2", export_pt2), ("onnx", export_onnx)):
        try:
            records[fmt] = export(model_dir, output=out, images=images, overwrite=True)
        except ExportParityError as exc:  # the export keeps no file that fails its own check
            tqdm.write(f"the {fmt} export of {model_dir} failed its parity check, no {fmt} paths: {exc}")
    if "pt2" in records:
        paths["kit (.pt2)"] = Predictor.from_dir(Path(records["pt2"]["path"]).parent)
    if "onnx" in records:
        onnx_path = Path(records["onnx"]["path"])
        paths["onnxruntime"] = load_exported_predictor(onnx_path)
        peer = load_exported_predictor(onnx_path)
        peer.model, _ = onnx_parts(onnx_path, session_for=OpenVINOSession)
        paths["openvino on the onnx"] = peer
    return paths


def default_path(model_dir: Path, work: Path) -> tuple[Predictor, dict]:
    """The default runtime (``auto``) as a server starts it, on a copy of ``model_dir`` with no cached decision:
    its predictor and the start-up seconds of torch, of ``auto`` deciding and of ``auto`` reading its cache."""
    folder = work / "startup" / f"{model_dir.parent.name}_{model_dir.name}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in (WEIGHTS, MODEL_JSON):
        shutil.copy2(model_dir / name, folder / name)
    os.environ[CACHE_ENV], os.environ[CACHE_ROOT_ENV] = "1", str(work / "user-cache")  # the cache as users have it
    shutil.rmtree(work / "user-cache", ignore_errors=True)
    seconds = {}
    for name, runtime in (("torch", "torch"), ("auto, first start", "auto"), ("auto, cached", "auto")):
        start = time.perf_counter()
        predictor = load_predictor(folder, runtime, device="cpu")
        seconds[name] = time.perf_counter() - start
        if name == "auto, first start":
            chosen = predictor
    if not (folder / CACHE_FOLDER).is_dir():
        raise SystemExit(f"auto cached no decision in {folder / CACHE_FOLDER}")
    return chosen, {"seconds": seconds, "choice": chosen.choice, "cached_runtime": predictor.runtime}


def judge_ap(paths: dict[str, Predictor], names: list[str], model_dir: Path, threshold: float) -> dict:
    """The val mask AP and box AP of each of ``names`` against eager fp32's, where the model's val json is here."""
    val_json = model_val_json(read_model_info(model_dir))
    if val_json is None:
        return {}
    reference = predict_dataset(paths["eager fp32"], load_coco(val_json), progress=True)
    return {name: compare_ap(paths["eager fp32"], paths[name], val_json, threshold, reference_runs=reference,
                             name=name, progress=True).to_dict() for name in names}


def floors_ms(model_dir: Path, image: np.ndarray, fp32_gflops: float, bf16_gflops: float) -> dict:
    """The model's multiply-adds on ``image`` over this machine's matrix rates: the fp32 and bf16 floors."""
    from maskrcnn_finetune.modeling.complexity import count_gmacs

    model = Predictor.from_dir(model_dir, fast=False).model
    gmacs = count_gmacs(model, image.shape[0], image.shape[1])
    return {"gmacs": gmacs, "fp32_ms": gmacs * 2 / fp32_gflops * 1000, "bf16_ms": gmacs * 2 / bf16_gflops * 1000}


def run_case(name: str, model_dir: Path, images, work: Path, rounds: int, with_compile: bool) -> dict:
    info = read_model_info(model_dir)
    threshold = float(info.get("score_threshold", 0.5))
    paths = build_paths(model_dir, images, work, with_compile)
    default, startup = default_path(model_dir, work)
    default_name = f"default (auto: {default.runtime})"
    paths[default_name] = default
    low = max(0.0, threshold - SCORE_TOLERANCE)
    first_ms, results = {}, {}
    for path, predictor in paths.items():  # the warm-up (torch.compile compiles here), and the parity answers
        start = time.perf_counter()
        results[path] = [predictor(image, threshold=low) for image in images]
        first_ms[path] = (time.perf_counter() - start) * 1000
    times = alternating_rounds(paths, images, rounds, desc=f"{name}: rounds")
    eager_ms = statistics.median(times["eager fp32"])
    ap = judge_ap(paths, ["kit (openvino int8)", default_name], model_dir, threshold)
    rows = []
    for path, predictor in paths.items():
        report = compare_runs(results["eager fp32"], results[path], threshold)
        ms = statistics.median(times[path])
        if path == "eager fp32":
            ok, parity = None, "the reference"
        elif report.ok and not report.matched:  # empty answers agree whatever the runtime: nothing was compared
            ok, parity = None, f"not judged: no instance at or above {threshold} in either run"
        else:
            ok, parity = report.ok, report.describe()
        rows.append({"path": path, "mode": predictor.describe_mode() if path.startswith("kit") else "",
                     "instances": sum(int((r.scores >= threshold).sum()) for r in results[path]),
                     "median_ms": ms, "all_ms": times[path], "x_eager": eager_ms / ms, "first_call_ms": first_ms[path],
                     "parity_ok": ok, "parity": parity, "ap": ap.get(path)})
    return {"case": name, "model_dir": str(model_dir), "images": len(images), "threshold": threshold, "rows": rows,
            "image_size": list(images[0].shape[:2]), "default": default_name, "startup": startup}


def ap_text(ap: dict | None, path: str) -> str:
    """A row's val APs against eager's, or "-" where they were not measured."""
    if not ap:
        return "-"
    ours = ap[path]
    verdict = "within" if ap["ok"] else "more than"
    return (f"mask {ours['mask']:.3f} vs {ap['fp32']['mask']:.3f}, box {ours['box']:.3f} vs {ap['fp32']['box']:.3f} "
            f"({verdict} {ap['max_drop'] * 100:g} pt)")


def goal_line(case: dict) -> str:
    """The default path's speed-up over eager, and whether its val mask AP stayed within a point."""
    row = next(row for row in case["rows"] if row["path"] == case["default"])
    startup = case["startup"]["seconds"]
    line = (f"Default path: {case['default']}, {row['x_eager']:.2f}x eager; start-up (load and choose, in the "
            f"process): torch {startup['torch']:.1f} s, auto deciding {startup['auto, first start']:.1f} s, "
            f"auto from its cached decision {startup['auto, cached']:.1f} s")
    if row["ap"]:
        line += f"; val AP {ap_text(row['ap'], row['path'])}"
    elif case["default"].endswith("(auto: torch)"):
        line += "; torch needs no AP check"
    return line + "."


def case_table(case: dict, rounds: int) -> str:
    """One case's table, under a line that says what it ran."""
    floor = case.get("floor")
    floor_text = (f"; floor for its {floor['gmacs']:.1f} GMACs on the first image: {floor['fp32_ms']:.0f} ms at the "
                  f"fp32 rate, {floor['bf16_ms']:.0f} ms at the bf16 rate" if floor else "")
    lines = [f"{case['label']}: {case['images']} image(s) of {case['image_size'][0]}x{case['image_size'][1]}, "
             f"threshold {case['threshold']}; median of {rounds} alternating rounds{floor_text}.", "",
             "| path | ms / image | x eager | parity with eager fp32 | val AP vs eager fp32 |", "|---|---|---|---|---|"]
    for row in case["rows"]:
        if row["path"] == "eager fp32":
            parity = "-"
        elif row["parity_ok"] is None:
            parity = row["parity"]
        else:
            parity = "match" if row["parity_ok"] else "differs: " + row["parity"]
        label = row["path"] + (f" ({row['mode']})" if row["mode"] else "")
        lines.append(f"| {label} | {row['median_ms']:.0f} | {row['x_eager']:.2f} | {parity} | {ap_text(row.get('ap'), row['path'])} |")
    return "\n".join([*lines, "", goal_line(case)])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.results_md:
        check_results_file(args.results_md, [section_name(name) for name in args.cases])
    machine = Machine.measure()
    print(machine.line())
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="runtime_peers_"))
    work.mkdir(parents=True, exist_ok=True)
    cases = []
    for name in args.cases:
        label = name
        if name == "demo":
            arrays, _ = check_images(None, Predictor.from_dir(args.demo_dir, fast=False).spec,
                                     read_model_info(args.demo_dir))
            folder = args.demo_dir
        elif name == "trained":
            folder, arrays = trained_folder_at(args.trained_dir, args.trained_size, args.trained_images, work)
            label = f"trained {read_model_info(args.trained_dir)['model']['backbone']} at {args.trained_size} px"
        else:
            folder, arrays = r50_folder(work)
        cases.append({**run_case(name, folder, arrays, work, args.rounds, args.compile), "label": label})
        cases[-1]["floor"] = floors_ms(folder, arrays[0], machine.fp32_start, machine.bf16)
    machine.finish()
    command = command_line(__file__, argv)
    report = {"command": command, "rounds": args.rounds, "cases": cases,
              "machine": {**machine.to_dict(), "python": platform.python_version()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    tables = {section_name(case["case"]): case_table(case, args.rounds) for case in cases}
    print(machine.line())
    print("\n\n".join(tables.values()))
    if args.results_md:
        write_sections(args.results_md, tables, command, machine)
        print(f"wrote the section(s) {', '.join(tables)} of {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
