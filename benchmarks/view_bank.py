"""Build throughput of a bank of stored teacher views (views/s): teacher fp32 against bf16,
1 process against 2.

At real sizes by default (the ViT-L/14 PromptSRC teacher of ``promptkd_models.py``: random
weights with the real shapes, nothing downloaded), on ``--images`` photo-like JPEGs of
500 x 375 px written once into ``--files``. Each build computes the bank exactly as a
student run or ``scripts/promptkd/teacher_views.sh`` does (``trainers/promptkd_views.py``:
``view_features_compute``, ``bank_arrays``; ``ShardedStore.build``): per image K views drawn,
replayed and resized for the teacher (``teacher_view``), the teacher's image features under
its precision's autocast, written in shards. With N processes, process ``r`` builds the
shards ``s % N == r`` (as the torchrun ranks do) with ``cores / N`` threads; the bank is then
verified and finished (``ShardedStore.finish``) and compared byte for byte with the bank of
the first process count (threads differ, so float sums may differ in the last bit).

views/s = images x K / (last process's end - first process's start of the build); teacher
loading is timed apart (every process loads its own), and each process first computes one
image's views untimed (a warm-up). Usage::

    python benchmarks/view_bank.py [--images 16] [--k 2] [--precs fp32,bf16] [--procs 1,2]
        [--shard-images 4] [--workers 0] [--build-batch 64] [--pair real] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.promptkd_models import PAIRS, benchmark_cfg, make_files  # noqa: E402
from benchmarks.promptkd_step import peak_rss_mb  # noqa: E402
from dassl_ext.utils.shard_store import ShardedStore  # noqa: E402

SOURCE_SIZE = (500, 375)  # the JPEGs' size: a typical photo of the PromptKD datasets


def jpeg_folder(args: argparse.Namespace) -> str:
    return os.path.join(args.files, f"jpegs_{args.images}")


def store_for(args: argparse.Namespace, folder: str, width: int, dtype: str) -> ShardedStore:
    """The bank's store layout as trainers/promptkd_views.py makes it (its arrays)."""
    from trainers.promptkd_views import bank_arrays

    arrays = bank_arrays(args.k, width, dtype)
    return ShardedStore(folder, args.images, arrays, args.shard_images, {"benchmark": "view_bank"})


def build_cfg(args: argparse.Namespace, prec: str):
    """The student config whose bank is built: the PromptKD input pipeline at the pair's
    size, K views, teacher precision ``prec``."""
    pair = PAIRS[args.pair]
    cfg = benchmark_cfg(args.files, pair, "fp32", prec)
    cfg.INPUT.SIZE = (pair.size, pair.size)
    cfg.DATALOADER.NUM_WORKERS = args.workers
    cfg.TRAINER.PROMPTKD.STORED_VIEWS, cfg.TRAINER.PROMPTKD.VIEW_SEED = args.k, 1
    return cfg


def run_worker(args: argparse.Namespace) -> dict:
    """One process: load the teacher, build this rank's shards; times and memory."""
    import trainers.promptkd_views as views
    from dassl_ext.data.splits import Datum
    from dassl_ext.data.views import ReplayTransform
    from trainers.promptkd import teacher_view
    from trainers.promptkd_teacher import build_frozen_teacher, resolve_teacher

    torch.set_num_threads(args.threads)
    if args.build_batch:
        views.BUILD_BATCH = args.build_batch
    device = torch.device(args.device)
    t0, c0 = time.perf_counter(), time.process_time()
    cfg, names = build_cfg(args, args.prec), ["class 0"]
    spec = resolve_teacher(cfg, device, names)
    teacher = build_frozen_teacher(cfg, spec, names)
    teacher.drop_text_tower()
    load_sec, load_cpu = time.perf_counter() - t0, time.process_time() - c0
    prec = spec.precision

    @torch.no_grad()
    def features(images: torch.Tensor) -> torch.Tensor:  # as PromptKD.teacher_image_embedding
        with prec.autocast():
            return teacher.image_embedding(teacher_view(images, teacher.input_resolution))

    folder = jpeg_folder(args)
    data = [Datum(impath=os.path.join(folder, n)) for n in sorted(os.listdir(folder))]
    width, replay = int(spec.embed_dim()), ReplayTransform.from_cfg(cfg)
    # stored in the dtype the features come in, as prepare_bank does
    probe = features(torch.zeros(1, 3, *replay.size, device=device))
    dtype = next((n for n, d in views.STORED_DTYPES.items() if d == probe.dtype), "float32")
    store = store_for(args, args.folder, width, dtype)
    compute = views.view_features_compute(
        features, cfg, data, replay, device, views.STORED_DTYPES[dtype]
    )
    compute(0, 1)  # warm-up (first calls: the image codecs, the kernels), not timed
    start, c0 = time.time(), time.process_time()
    rows = store.build(compute, args.rank, args.world, progress=None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "rank": args.rank,
        "teacher_prec": prec.effective,
        "dtype": dtype,
        "width": width,
        "rows": rows,
        "start": start,
        "end": time.time(),
        "build_cpu_sec": time.process_time() - c0,
        "load_sec": load_sec,
        "load_cpu_sec": load_cpu,
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0,
    }


def bank_digest(folder: str) -> str:
    """sha256 over the finished bank's shard files, in order."""
    with open(os.path.join(folder, "manifest.json")) as f:
        shards = json.load(f)["shards"]
    h = hashlib.sha256()
    for s in shards:
        for name in sorted(s["files"]):
            h.update(s["files"][name]["sha256"].encode())
    return h.hexdigest()


def measure(args: argparse.Namespace, prec: str, procs: int, root: str) -> dict:
    """Build one bank with ``procs`` processes; its row."""
    folder = os.path.join(root, f"bank_{prec}_{procs}")
    shutil.rmtree(folder, ignore_errors=True)
    threads = max((os.cpu_count() or 1) // procs, 1) if args.device == "cpu" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    base = [sys.executable, os.path.abspath(__file__), "--worker", "--folder", folder,
            "--prec", prec, "--world", str(procs), "--threads", str(threads),
            *child_options(args)]  # fmt: skip
    running = [
        subprocess.Popen([*base, "--rank", str(r)], stdout=subprocess.PIPE, text=True, env=env)
        for r in range(procs)
    ]
    outs = [p.communicate()[0] for p in running]
    if any(p.returncode for p in running):
        raise SystemExit(f"a build process failed ({prec}, {procs} processes); see above")
    workers = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    store = store_for(args, folder, workers[0]["width"], workers[0]["dtype"])
    store.finish()  # verifies every shard (sizes, sha256)
    seconds = max(w["end"] for w in workers) - min(w["start"] for w in workers)
    views = args.images * args.k
    assert sum(w["rows"] for w in workers) == args.images  # every image built exactly once
    return {
        "teacher_prec": workers[0]["teacher_prec"],
        "dtype": workers[0]["dtype"],
        "procs": procs,
        "threads": threads,
        "views": views,
        "build_sec": seconds,
        "views_per_sec": views / seconds,
        "cpu_sec_per_view": sum(w["build_cpu_sec"] for w in workers) / views,
        "load_sec": max(w["load_sec"] for w in workers),
        "peak_rss_mb": max(w["peak_rss_mb"] for w in workers),
        "peak_cuda_mb": max(w["peak_cuda_mb"] for w in workers),
        "bytes": store.estimate_bytes(),
        "digest": bank_digest(folder),
    }


def child_options(args: argparse.Namespace) -> list[str]:
    return ["--images", str(args.images), "--k", str(args.k), "--shard-images",
            str(args.shard_images), "--workers", str(args.workers), "--build-batch",
            str(args.build_batch), "--pair", args.pair, "--files", args.files, "--device",
            args.device]  # fmt: skip


def format_table(rows: list[dict]) -> str:
    """One row per build, then bf16 / fp32 and N processes / 1 ratios of views/s."""
    from tabulate import tabulate

    first = {}
    for r in rows:
        first.setdefault(r["teacher_prec"], r)
    table = [
        [r["teacher_prec"], r["procs"], r["threads"], r["views"], f"{r['load_sec']:.1f}",
         f"{r['build_sec']:.2f}", f"{r['views_per_sec']:.2f}",
         f"{1000 * r['cpu_sec_per_view']:.0f}", f"{r['peak_rss_mb']:.0f}",
         "yes" if r["digest"] == first[r["teacher_prec"]]["digest"] else "no (float sums)"]
        for r in rows
    ]  # fmt: skip
    head = ["teacher", "procs", "threads each", "views", "load s", "build s", "views/s",
            "CPU ms/view", "peak RSS MB/proc", "same bytes as first"]  # fmt: skip
    lines = [tabulate(table, headers=head)]
    by = {(r["teacher_prec"], r["procs"]): r for r in rows}
    procs = sorted({r["procs"] for r in rows})
    for n in procs:
        if ("fp32", n) in by and ("bf16", n) in by:
            ratio = by["bf16", n]["views_per_sec"] / by["fp32", n]["views_per_sec"]
            lines.append(f"views/s, teacher bf16 / fp32 ({n} process(es)): {ratio:.2f}x")
    for prec in dict.fromkeys(r["teacher_prec"] for r in rows):
        for n in procs[1:]:
            if (prec, procs[0]) in by and (prec, n) in by:
                ratio = by[prec, n]["views_per_sec"] / by[prec, procs[0]]["views_per_sec"]
                lines.append(f"views/s, {n} processes / {procs[0]} (teacher {prec}): {ratio:.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=16, help="training images in the bank")
    p.add_argument("--k", type=int, default=2, help="views per image (STORED_VIEWS)")
    p.add_argument("--precs", default="fp32,bf16", help="teacher precisions, one build each")
    p.add_argument("--procs", default="1,2", help="process counts, one build each")
    p.add_argument("--shard-images", type=int, default=4,
                   help="images per shard (enough shards for every process)")  # fmt: skip
    p.add_argument("--workers", type=int, default=0, help="DATALOADER.NUM_WORKERS of the build")
    p.add_argument("--build-batch", type=int, default=0,
                   help="views per teacher forward (0: trainers/promptkd_views.py's)")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--pair", default="real", choices=sorted(PAIRS))
    p.add_argument("--files", default=os.path.join(tempfile.gettempdir(), "promptkd_bench"),
                   help="folder of the weight files and JPEGs (written once)")  # fmt: skip
    p.add_argument("--out", default="", help="folder of the banks (default: a temp folder)")
    p.add_argument("--json", help="also write the rows to this file")
    for hidden in ("--folder", "--prec"):  # a build process
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.prec_list = [t for t in args.precs.split(",") if t]
    try:
        args.proc_list = [int(t) for t in args.procs.split(",") if t]
    except ValueError:
        p.error(f"--procs takes process counts such as 1,2, not {args.procs!r}")
    if args.images < 1 or args.k < 1 or args.shard_images < 1 or min(args.proc_list) < 1:
        p.error("--images, --k, --shard-images and --procs must be at least 1")
    shards = -(-args.images // args.shard_images)
    if not args.worker and max(args.proc_list) > shards:
        p.error(f"{shards} shards cannot keep {max(args.proc_list)} processes busy; "
                "lower --shard-images or raise --images")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    from benchmarks.data_loading import write_jpegs

    make_files(args.files, PAIRS[args.pair])
    if not os.path.isdir(jpeg_folder(args)):
        tmp = jpeg_folder(args) + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        write_jpegs(tmp, args.images, SOURCE_SIZE)
        os.replace(tmp, jpeg_folder(args))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or tmp
        for prec in args.prec_list:
            for procs in args.proc_list:
                rows.append(measure(args, prec, procs, root))
                print(f"done: teacher {prec}, {procs} process(es)", file=sys.stderr, flush=True)
    pair = PAIRS[args.pair]
    print(f"Bank build, {pair.teacher} teacher, {args.images} images x {args.k} views "
          f"({args.shard_images} images per shard), {args.device}")  # fmt: skip
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
