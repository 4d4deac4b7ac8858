"""The model server under load from a second process, and where its own time goes (issue 7).

Usage:
    python benchmarks/server_load.py --model-dir outputs/demo/model [--size 800] [--clients 1 4 16]
        [--requests-per-level 64] [--memory-requests 1000] [--out outputs/bench_server/server_load.json]
        [--workers 1 2 | --micro-batch 1 4] [--results-md benchmarks/RESULTS.md]

What it does, in order:

1. Makes one test image: a deterministic synthetic picture (maskrcnn_finetune/data/synthetic.py,
   seed 0) resized to ``--size`` pixels on its short side (800 -> 1067x800), encoded once as JPEG;
   or ``--image FILE``, sent as it is.
2. Starts the real server (``python -m rest_api_flask``, waitress, via
   :func:`rest_api_flask.launcher.start_server`) on a free loopback port, timing its start-up (from
   the process's start to ``/health`` answering with the model loaded and warmed up), and from this
   process sends ``--requests-per-level`` multipart ``POST /api/v1/predict`` requests for each
   number of concurrent clients in ``--clients`` (one thread and one keep-alive connection per
   client). Per level: throughput, p50/p95 client latency, errors (any status but 200, 429
   included), the median model time the server reports (``timing_ms.model``) and the overhead
   (client latency minus model time; with several clients it includes the wait for the model,
   which serves one request at a time).
3. Memory: ``--memory-requests`` requests from 4 clients, sampling the server process's resident
   memory (``VmRSS`` in ``/proc/<pid>/status``) every 50 requests.
4. Stops the server and measures the server's own work for one request in this process, stage by
   stage (decode, model, the JSON of the instances, each result file, the response), with the same
   model and image, plus the same stages for ``--worst-case-instances`` (100) instances.

It writes everything to ``--out`` (JSON) and prints the Markdown tables. ``--results-md`` writes them
as a section (see benchmarks/results_md.py), one per kind of run so that the runs do not overwrite each
other: ``server-load`` (one worker, one image per model call: the levels, the memory, the stages),
``server-workers`` (a run with ``--workers`` other than 1) or ``server-micro-batch`` (a run with
``--micro-batch`` other than 1). It is a timing: run it on a quiet machine. ``--torch-threads N`` (or ``OMP_NUM_THREADS``) sets the
model's CPU threads in the server and in the in-process timing alike.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from tqdm import tqdm

from rest_api_flask.launcher import start_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cpu_inference's helpers and results_md, beside this file
from results_md import Machine, add_results_md_argument, check_results_file, command_line, write_sections  # noqa: E402

PREDICT = "/api/v1/predict"
MEMORY_CLIENTS = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="the model folder to serve")
    parser.add_argument("--image", type=Path, default=None,
                        help="an image file to send as it is (default: a synthetic image of --size px)")
    parser.add_argument("--model-input", type=int, default=None,
                        help="serve a copy of the model that resizes images to this short side (anchors scaled "
                             "with it), e.g. 800 for a model trained at 192")
    parser.add_argument("--size", type=int, default=800, help="short side of the synthetic image, px")
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg", help="encoding of the synthetic image")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients per level")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="server processes (flask_app.py --workers); each count is a run of its own")
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[1],
                        help="flask_app.py --micro-batch: images in one model call from requests that wait together; "
                             "each value is a run of its own (with every --workers count)")
    parser.add_argument("--requests-per-level", type=int, default=64, help="requests sent at each level")
    parser.add_argument("--memory-requests", type=int, default=1000,
                        help=f"requests of the memory run ({MEMORY_CLIENTS} clients; 0 skips it)")
    parser.add_argument("--rss-every", type=int, default=50, help="requests between two samples of the server's memory")
    parser.add_argument("--warmup", type=int, default=3, help="requests sent (and not counted) before the levels")
    parser.add_argument("--threshold", type=float, default=None,
                        help="score threshold of the requests (default: the model folder's)")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="waitress threads (default: the server's own default)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch CPU threads of the server and of the in-process timing (sets OMP_NUM_THREADS; "
                             "default: torch's own choice)")
    parser.add_argument("--breakdown-repeats", type=int, default=5,
                        help="repeats of the in-process per-stage timing (the median is reported)")
    parser.add_argument("--worst-case-instances", type=int, default=100,
                        help="instances of the worst-case per-stage timing (0 skips it)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="the server's folders (default: a temporary folder, removed at the end)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_server" / "server_load.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_results_md_argument(parser)
    return parser


def section_name(args) -> str:
    """The results section of a run: the plain server, several workers, or micro-batching."""
    if args.workers != [1]:
        return "server-workers"
    return "server-micro-batch" if args.micro_batch != [1] else "server-load"


# ---------------------------------------------------------------- the test image
def synthetic_image(size: int, fmt: str = "jpeg") -> tuple[bytes, str]:
    """The CPU benchmark's synthetic picture (seed 0), ``size`` px on its short side, as file bytes.

    Returns:
        ``(bytes, file name)``.
    """
    from cpu_inference import test_image

    picture = Image.fromarray(test_image(size, seed=0))
    buffer = io.BytesIO()
    if fmt == "jpeg":
        picture.save(buffer, format="JPEG", quality=90)
    else:
        picture.save(buffer, format="PNG")
    return buffer.getvalue(), f"bench_{picture.width}x{picture.height}.{'jpg' if fmt == 'jpeg' else 'png'}"


# ---------------------------------------------------------------- load from a second process
def post_image(session: requests.Session, url: str, data: bytes, name: str, threshold: float | None) -> dict:
    """One ``POST /api/v1/predict``: client latency, status, and the server's timings and instance count."""
    form = {"threshold": str(threshold)} if threshold is not None else None
    start = time.perf_counter()
    try:
        response = session.post(url + PREDICT, files={"image": (name, data)}, data=form, timeout=300)
        status, body = response.status_code, response.content
    except requests.RequestException as exc:
        return {"latency_ms": (time.perf_counter() - start) * 1000, "status": None, "error": str(exc)[:200]}
    latency = (time.perf_counter() - start) * 1000
    record = {"latency_ms": latency, "status": status}
    if status == 200:
        payload = json.loads(body)
        record.update(model_ms=payload["timing_ms"]["model"], server_ms=payload["timing_ms"]["total"],
                      num_instances=payload["num_instances"])
    else:
        record["error"] = body[:200].decode("utf-8", "replace")
    return record


def run_clients(url: str, data: bytes, name: str, n_requests: int, clients: int, threshold: float | None,
                on_done=None, desc: str = "", progress: bool = True) -> tuple[list[dict], float]:
    """``n_requests`` requests shared by ``clients`` threads, each with its own keep-alive connection.

    Args:
        on_done: called (under a lock) with the number of requests finished so far, after each one.

    Returns:
        ``(one record per request, wall seconds)``.
    """
    records: list[dict] = []
    lock = threading.Lock()
    bar = tqdm(total=n_requests, desc=desc, unit="req", leave=False, disable=not progress)
    todo = iter(range(n_requests))

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                record = post_image(session, url, data, name, threshold)
                with lock:
                    records.append(record)
                    bar.update()
                    if on_done:
                        on_done(len(records))

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    bar.close()
    return records, seconds


def summarize_level(records: list[dict], seconds: float, clients: int) -> dict:
    """Throughput, latency percentiles, errors, model time and overhead of one level."""
    ok = [r for r in records if r["status"] == 200]
    latency = np.array([r["latency_ms"] for r in ok]) if ok else np.array([np.nan])
    model = statistics.median(r["model_ms"] for r in ok) if ok else float("nan")
    overhead = statistics.median(r["latency_ms"] - r["model_ms"] for r in ok) if ok else float("nan")
    server_overhead = statistics.median(r["server_ms"] - r["model_ms"] for r in ok) if ok else float("nan")
    return {
        "clients": clients,
        "requests": len(records),
        "errors": sum(r["status"] != 200 for r in records),
        "statuses": sorted({str(r["status"]) for r in records}),
        "seconds": seconds,
        "throughput_per_s": len(ok) / seconds if seconds else float("nan"),
        "latency_p50_ms": float(np.percentile(latency, 50)),
        "latency_p95_ms": float(np.percentile(latency, 95)),
        "latency_min_ms": float(latency.min()),
        "model_ms_median": model,
        "server_total_ms_median": statistics.median(r["server_ms"] for r in ok) if ok else float("nan"),
        "overhead_ms_median": overhead,
        "overhead_pct_of_model": 100 * overhead / model if ok and model else float("nan"),
        "server_overhead_ms_median": server_overhead,
        "num_instances": sorted({r["num_instances"] for r in ok}),
    }


def read_rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def memory_run(url: str, pids: list[int], data: bytes, name: str, n_requests: int, threshold: float | None,
               every: int = 50, progress: bool = True) -> dict:
    """``n_requests`` requests from :data:`MEMORY_CLIENTS` clients, the server's RSS (summed over its
    processes ``pids``: the server, or its workers and the process that started them) after every ``every``."""
    samples: list[tuple[int, int]] = []
    last: dict[int, int] = {}

    def sample(done: int) -> None:
        if done % every == 0 or done == n_requests:
            last.update({pid: read_rss_kb(pid) for pid in pids})
            samples.append((done, sum(last.values())))

    before = sum(read_rss_kb(pid) for pid in pids)
    records, seconds = run_clients(url, data, name, n_requests, MEMORY_CLIENTS, threshold, on_done=sample,
                                   desc="memory run", progress=progress)
    rss = [kb for _, kb in samples]
    first = rss[0] if rss else before
    return {
        "requests": n_requests,
        "clients": MEMORY_CLIENTS,
        "every": every,
        "errors": sum(r["status"] != 200 for r in records),
        "seconds": seconds,
        "rss_before_kb": before,
        "samples": [{"requests": n, "rss_kb": kb} for n, kb in samples],
        "rss_first_mb": first / 1024,
        "rss_max_mb": max(rss, default=first) / 1024,
        "rss_last_mb": (rss[-1] if rss else first) / 1024,
        "rss_last_per_process_mb": {str(pid): kb / 1024 for pid, kb in last.items()},
        "growth_pct": 100 * ((rss[-1] if rss else first) - first) / first,
        "max_growth_pct": 100 * (max(rss, default=first) - first) / first,
    }


def load_test(args, data: bytes, name: str, work: Path, workers: int = 1, micro_batch: int = 1) -> dict:
    """Starts the server process (with ``workers`` processes, ``--micro-batch``) and runs the levels and the
    memory run against it."""
    extra = ["--threads", str(args.server_threads)] if args.server_threads else []
    extra += ["--workers", str(workers)] if workers > 1 else []
    extra += ["--micro-batch", str(micro_batch)] if micro_batch > 1 else []
    progress = not args.no_progress
    started = time.perf_counter()
    server = start_server(args.model_dir, work / "uploads", work / "outputs", infer_with_cpu=True,
                          threshold=args.threshold, extra_args=extra, log_path=work / "server.log")
    # from the process's start to /health answering with the model loaded and warmed up (start_server
    # polls every 0.1 to 0.2 s)
    startup_s = time.perf_counter() - started
    try:
        info = requests.get(server.url + "/api/v1/model", timeout=10).json()
        warm, _ = run_clients(server.url, data, name, args.warmup, 1, args.threshold, progress=False)
        if any(r["status"] != 200 for r in warm):
            raise RuntimeError(f"the warm-up requests failed: {warm[:2]}; see {work / 'server.log'}")
        levels = []
        for clients in tqdm(args.clients, desc="levels", disable=not progress):
            records, seconds = run_clients(server.url, data, name, args.requests_per_level, clients, args.threshold,
                                           desc=f"{clients} clients", progress=progress)
            levels.append({**summarize_level(records, seconds, clients), "records": records})
        memory = None
        if args.memory_requests:
            pids = [server.process.pid, *server.info.get("workers", [])]
            memory = memory_run(server.url, pids, data, name, args.memory_requests, args.threshold,
                                every=args.rss_every, progress=progress)
    finally:
        server.stop()
    return {"workers": workers, "micro_batch": micro_batch, "startup_s": startup_s, "model": info, "levels": levels,
            "memory": memory}


# ---------------------------------------------------------------- the server's own work, stage by stage
def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def worst_case_instances(image_size: tuple[int, int], n: int, class_names: list[str], seed: int = 0):
    """``n`` overlapping elliptic instances spread over an image: the most a model returns by default."""
    from maskrcnn_finetune.structures import Instances

    height, width = image_size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((n, height, width), dtype=bool)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for k in range(n):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.02, 0.15) * width, rng.uniform(0.02, 0.15) * height
        x0, x1 = int(max(0, cx - rx)), int(min(width, cx + rx + 1))
        y0, y1 = int(max(0, cy - ry)), int(min(height, cy + ry + 1))
        sub = ((xx[y0:y1, x0:x1] - cx) / rx) ** 2 + ((yy[y0:y1, x0:x1] - cy) / ry) ** 2 <= 1
        masks[k, y0:y1, x0:x1] = sub
        boxes[k] = (x0, y0, x1, y1)
    scores = np.sort(rng.uniform(0.5, 1.0, n)).astype(np.float32)[::-1].copy()
    class_ids = rng.integers(0, len(class_names), n).astype(np.int64)
    return Instances((height, width), boxes, scores, class_ids, masks, list(class_names))


def stage_times(app, image: np.ndarray, instances, repeats: int) -> dict:
    """Milliseconds of each stage of the server's work after the model, for one image and its instances.

    The stages call the functions :func:`rest_api_flask.api.store_result` calls; the last one is
    all of them together, files written to disk, as a request does it.
    """
    from maskrcnn_finetune.visualize import draw_instances
    from rest_api_flask import results
    from rest_api_flask.encoding import coco_results, instances_json, mask_rles

    n = len(instances)
    rles = mask_rles(instances)
    union = instances.union_mask()
    overlay = draw_instances(image, instances)
    stages = {
        "RLE of the masks": _median_ms(lambda: mask_rles(instances), repeats),
        "instances JSON": _median_ms(lambda: instances_json(instances, "0" * 32, rles=rles), repeats),
        "union of the masks": _median_ms(instances.union_mask, repeats),
        "overlay: draw (on its first GET)": _median_ms(lambda: draw_instances(image, instances), repeats),
        "overlay: PNG (on its first GET)": _median_ms(lambda: results.png_bytes(overlay), repeats),
        "mask PNGs": _median_ms(lambda: [results.mask_png(instances.masks[k]) for k in range(n)], repeats),
        "crop PNGs": _median_ms(lambda: [results.crop_png(image, instances.masks[k], instances.boxes[k])
                                         for k in range(n)], repeats),
        "union.png": _median_ms(lambda: results.mask_png(union), repeats),
        "coco_results.json": _median_ms(lambda: json.dumps(coco_results(instances, rles=rles)), repeats),
    }
    with app.app_context():
        store = results.get_store()

        def write_all():
            pending = store.begin()
            all_rles = mask_rles(instances)
            pending.write_files(image, instances, rles=all_rles, union=instances.union_mask())
            pending.commit({"instances": instances_json(instances, pending.id, rles=all_rles)})

        stages["files written (all but the overlay)"] = _median_ms(write_all, repeats)
    return stages


def overhead_breakdown(args, data: bytes, name: str, work: Path) -> dict:
    """The server's work for one request, measured in this process with the same model and image.

    The full request goes through the app's test client (no network); its parts are timed by
    calling the functions the API calls, on the same image and the instances the model found.
    """
    from maskrcnn_finetune.loading import load_predictor
    from rest_api_flask import create_app
    from rest_api_flask.encoding import instances_json
    from rest_api_flask.inference import get_service
    from rest_api_flask.inputs import decode_image

    predictor = load_predictor(args.model_dir, device="cpu")  # as the server loads it
    config = {"PREDICTOR": predictor, "UPLOAD_FOLDER": str(work / "inproc_uploads"),
              "OUTPUT_FOLDER": str(work / "inproc_outputs"), "WARMUP": True, "TESTING": True}
    if args.threshold is not None:
        config["THRESHOLD"] = args.threshold
    app = create_app(config)
    client = app.test_client()
    repeats = args.breakdown_repeats
    threshold = app.config["THRESHOLD"]

    def request_once():
        response = client.post(PREDICT, data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data")
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        return response.get_json()

    request_once()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        payload = request_once()
        timings.append(((time.perf_counter() - start) * 1000, payload["timing_ms"]["model"]))
    request_ms = statistics.median(t for t, _ in timings)
    model_ms = statistics.median(m for _, m in timings)

    with app.app_context():
        image = decode_image(data, app.config["MAX_PIXELS"])
        service = get_service()
        (instances,), _ = service.predict([image], threshold)
        stages = {"decode": _median_ms(lambda: decode_image(data, app.config["MAX_PIXELS"]), repeats),
                  "model": _median_ms(lambda: service.predict([image], threshold), repeats)}
        payload = {"instances": instances_json(instances, "0" * 32)}
        stages["response JSON"] = _median_ms(lambda: app.json.dumps(payload), repeats)
    stages.update(stage_times(app, image, instances, repeats))
    result = {
        "image": {"width": int(image.shape[1]), "height": int(image.shape[0]), "bytes": len(data)},
        "num_instances": len(instances),
        "request_ms": request_ms,
        "request_model_ms": model_ms,
        "request_overhead_ms": request_ms - model_ms,
        "request_overhead_pct": 100 * (request_ms - model_ms) / model_ms,
        "stages_ms": stages,
    }
    if args.worst_case_instances:
        many = worst_case_instances(instances.image_size, args.worst_case_instances, predictor.class_names)
        result["worst_case"] = {"num_instances": len(many), "stages_ms": stage_times(app, image, many, max(1, repeats // 2))}
    shutil.rmtree(work / "inproc_outputs", ignore_errors=True)
    shutil.rmtree(work / "inproc_uploads", ignore_errors=True)
    return result


# ---------------------------------------------------------------- the report
def markdown(report: dict, with_stages: bool = True) -> str:
    """The Markdown tables of a run: the levels, the memory runs, and (``with_stages``) one request's stages."""
    img = report["image"]
    lines = [f"Server: waitress on loopback, model on the CPU; clients: threads of a second process with keep-alive "
             f"connections; image {img['width']}x{img['height']} {img['format']}, {img['bytes'] // 1024} KiB; backbone "
             f"{report['load']['model'].get('backbone')}. Overhead = client latency minus the model time the server "
             "reports (medians); with more clients than workers it includes the wait for the model; a batched "
             "request's model time is its whole call's.", "",
             "| workers | micro-batch | clients | requests | errors | images/s | p50 latency (ms) | p95 latency (ms) "
             "| model (ms) | overhead (ms) | overhead / model |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    loads = report.get("loads") or [report["load"]]
    for load in loads:
        for lv in load["levels"]:
            lines.append(f"| {load.get('workers', 1)} | {load.get('micro_batch', 1)} | {lv['clients']} | "
                         f"{lv['requests']} | {lv['errors']} | "
                         f"{lv['throughput_per_s']:.2f} | {lv['latency_p50_ms']:.0f} | {lv['latency_p95_ms']:.0f} | "
                         f"{lv['model_ms_median']:.0f} | {lv['overhead_ms_median']:.0f} | "
                         f"{lv['overhead_pct_of_model']:.0f} % |")
    started = [load for load in loads if "startup_s" in load]
    if started:
        lines += ["", "| workers | micro-batch | start-up (s): from the server process's start to /health answering "
                  "with the model loaded |", "|---|---|---|"]
        lines += [f"| {load.get('workers', 1)} | {load.get('micro_batch', 1)} | {load['startup_s']:.1f} |"
                  for load in started]
    memories = [load for load in loads if load.get("memory")]
    if memories:
        lines += ["", "| workers | micro-batch | memory run: requests | clients | errors | RSS after the first sample (MiB) "
                  "| max (MiB) | last (MiB) | growth | max growth | per process at the end (MiB) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for load in memories:
            mem = load["memory"]
            per = ", ".join(f"{mb:.0f}" for mb in mem.get("rss_last_per_process_mb", {}).values())
            lines.append(f"| {load.get('workers', 1)} | {load.get('micro_batch', 1)} | {mem['requests']} | "
                         f"{mem['clients']} | {mem['errors']} | {mem['rss_first_mb']:.0f} | {mem['rss_max_mb']:.0f} | "
                         f"{mem['rss_last_mb']:.0f} | {mem['growth_pct']:+.1f} % | {mem['max_growth_pct']:+.1f} % | {per} |")
    if with_stages:
        bd = report["breakdown"]
        worst = bd.get("worst_case")
        lines += ["", f"One request in this process (same model and image, {bd['num_instances']} instances; medians):", "",
                  "| request (ms) | model (ms) | overhead (ms) | overhead / model |", "|---|---|---|---|",
                  f"| {bd['request_ms']:.0f} | {bd['request_model_ms']:.0f} | {bd['request_overhead_ms']:.0f} | "
                  f"{bd['request_overhead_pct']:.0f} % |", "",
                  "| stage | ms |" + (f" ms with {worst['num_instances']} instances |" if worst else ""),
                  "|---|---|" + ("---|" if worst else "")]
        for stage, ms in bd["stages_ms"].items():
            extra = worst["stages_ms"].get(stage) if worst else None
            lines.append(f"| {stage} | {ms:.1f} |" + (f" {extra:.1f} |" if extra is not None else (" |" if worst else "")))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    section = section_name(args)
    if args.results_md:
        check_results_file(args.results_md, [section])
    if args.torch_threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)  # the server process inherits it
        torch.set_num_threads(args.torch_threads)
    if args.image:
        data, name = args.image.read_bytes(), args.image.name
    else:
        data, name = synthetic_image(args.size, args.format)
    with Image.open(io.BytesIO(data)) as picture:
        image_info = {"width": picture.width, "height": picture.height, "format": picture.format, "bytes": len(data)}
    machine = Machine.measure()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="server_load_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.model_input:
            from cpu_inference import resized_model_dir

            args.model_dir = resized_model_dir(args.model_dir, args.model_input, work / "model")
        loads = [load_test(args, data, name, work / f"workers{n}_batch{m}", n, m)
                 for n in args.workers for m in args.micro_batch]
        breakdown = overhead_breakdown(args, data, name, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    machine.finish()
    command = command_line(__file__, argv)
    report = {"command": command, "image": image_info, "load": loads[0], "loads": loads, "breakdown": breakdown,
              "machine": {**machine.to_dict(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    text = markdown(report, with_stages=section == "server-load")
    print(machine.line())
    print(text)
    if args.results_md:
        write_sections(args.results_md, {section: text}, command, machine)
        print(f"wrote the section {section} of {args.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
