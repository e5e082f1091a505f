"""Throughput of `dgp batch`: images per minute with 1 and 2 local workers and with Ray, on this machine.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch_throughput.py [--prior cifar10] [--images 6]
        [--iterations-scale 0.05] [--candidates 100] [--out docs/batch-performance.md]

Inputs: CIFAR-10 test images from ``../shared/data/cifar10-jpg.tar.gz`` when present (else samples of the prior),
colorized with ``--degrade`` (so PSNR is measured too). Every configuration restores the same images into a
fresh folder; the outputs are compared with the first configuration's. Each worker runs torch on one
thread, so "1 worker" is one core, except in two configurations with one worker and a thread per core: one
image at a time (`dgp batch --batch-size 1`; the report gives every configuration that uses all cores against
it) and `dgp batch`'s default, the batched engine on chunks of the images (:func:`dgp.batch.auto_batch_size`)
split across the threads; the last one is `dgp batch --workers N` (one worker process per core, each with its
own chunks). The wall time of a run includes starting its workers (processes or Ray actors); starting the local
Ray instance itself is timed apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from dgp.allocator import keep_freed_memory
from dgp.batch import auto_batch_size, list_inputs, make_backend, run_batch
from dgp.batch.manifest import Manifest
from dgp.batch.runner import OUTPUTS_FOLDER, BatchSettings
from dgp.imageio import save_image
from dgp.priors.registry import PACKAGED_PRIORS, load_prior

REPO = Path(__file__).resolve().parents[1]
CIFAR = Path(os.environ.get("DGP_SHARED", REPO.parent / "shared")) / "data" / "cifar10-jpg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def gather_images(folder: Path, n: int, prior) -> str:  # noqa: ANN001
    """Write ``n`` input images into ``folder``; returns where they came from."""
    folder.mkdir(parents=True, exist_ok=True)
    if CIFAR.is_file():
        wanted = {f"test/{CLASSES[i % 10]}/{i // 10:04d}.jpg" for i in range(n)}
        with tarfile.open(CIFAR) as tar:
            for member in tar:
                if member.name in wanted:
                    data = tar.extractfile(member)
                    assert data is not None
                    (folder / member.name.replace("/", "_")[5:]).write_bytes(data.read())
        return f"CIFAR-10 test images ({CIFAR.name})"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in range(n):
            z = torch.randn(1, prior.G.dim_z, generator=g)
            y = torch.tensor([i % prior.n_classes])
            save_image(prior.G(z, prior.G.shared(y)), folder / f"sample{i:03d}.png")
    return "samples of the prior (shared CIFAR-10 data not found)"


def pixels(png: bytes) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16).copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_prior = "cifar10" if (PACKAGED_PRIORS / "cifar10").is_dir() else None
    parser.add_argument("--prior", default=default_prior, required=default_prior is None,
                        help="prior name or folder (default: the shipped cifar10 prior)")
    parser.add_argument("--prior-note", default="", help="how the prior was made, for the report")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--task", default="colorize")
    parser.add_argument("--iterations-scale", type=float, default=None)
    parser.add_argument("--candidates", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "batch-performance.md")
    parser.add_argument("--batch-size", type=int, default=3, help="also measure the batched engine on one thread "
                        "with this many images per batch (1: skip)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="wait up to this many seconds for the 1-min load average to fall below 0.5 (a job "
                             "that just ended keeps it up for a minute or two)")
    args = parser.parse_args()

    keep_freed_memory()  # as the dgp command does
    torch.set_num_threads(1)
    prior = load_prior(args.prior)
    work = Path(tempfile.mkdtemp(prefix="dgp-batch-bench-"))
    source = gather_images(work / "inputs", args.images, prior)
    inputs = list_inputs(work / "inputs")
    settings = BatchSettings(task=args.task, prior=str(args.prior), degrade=True,
                             iterations_scale=args.iterations_scale, candidates=args.candidates)
    schedule = settings.resolved(prior).schedule(prior)
    deadline = time.monotonic() + args.settle
    while os.getloadavg()[0] >= 0.5 and time.monotonic() < deadline:
        time.sleep(5)
    load_before = os.getloadavg()

    # (label, backend, workers, images per batch (None: `dgp batch`'s default), torch threads of the driver)
    configs = [("local, 1 worker (in the driver)", make_backend(1), 1, 1, 1),
               ("local, 2 worker processes", make_backend(2), 2, 1, 1)]
    ray_start = None
    if not args.no_ray:
        try:
            import ray

            t = time.perf_counter()
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            ray_start = time.perf_counter() - t
            configs.append(("Ray, local instance, 2 actors", make_backend(2, use_ray=True), 2, 1, 1))
        except ImportError:
            print("ray not installed: skipping the Ray configuration", file=sys.stderr)

    cores = os.cpu_count() or 1
    if cores > 1:  # one image at a time, torch on every core
        configs.append((f"local, 1 worker on {cores} threads, one image at a time (`--batch-size 1`)",
                        make_backend(1), 1, 1, cores))
    if args.batch_size > 1:
        configs.append((f"local, 1 worker, batched engine (`--batch-size {args.batch_size}`)", make_backend(1), 1,
                        args.batch_size, 1))
    if cores > 1:  # `dgp batch`'s default: batches split across the driver's threads, one per core
        configs.append((f"local, 1 worker on {cores} threads, batched engine (`dgp batch`'s default: batches of "
                        f"{auto_batch_size(prior, len(inputs), 1)})", make_backend(1), 1, None, cores))
        # one worker process per core, each restoring its own batches (the default with --workers)
        configs.append((f"local, {cores} worker processes, batched engine (`--workers {cores}`: batches of "
                        f"{auto_batch_size(prior, len(inputs), cores)})", make_backend(cores), cores, None, 1))

    # Warm up torch in this process (first-call costs would otherwise land on the first configuration).
    run_batch(inputs[:1], work / "warm-up", settings, prior)

    results = []
    reference = None
    for label, backend, workers, batch_size, threads in configs:
        out = work / f"out-{len(results)}"
        print(f"{label}: {len(inputs)} images ...", file=sys.stderr, flush=True)
        times: list[float] = []
        torch.set_num_threads(threads)  # every configuration sets its own
        t0 = time.perf_counter()
        summary = run_batch(inputs, out, settings, prior, backend=backend, batch_size=batch_size,
                            on_event=lambda e: times.append(time.perf_counter() - t0) if e.kind == "row" else None)
        rows = Manifest(out).read()
        restore_s = [r.timings.get("restore", 0.0) for r in rows.values() if r.status == "ok"]
        failed = [r for r in rows.values() if r.status != "ok"]
        if failed:  # a figure over failed images would mean nothing
            sys.exit(f"{label}: {len(failed)} of {len(rows)} images failed, first: {failed[0].name}: "
                     f"{failed[0].error}")
        files = {p.name: p.read_bytes() for p in (out / OUTPUTS_FOLDER).iterdir()}
        if reference is None or files == reference:
            same = "yes"
        else:
            diff = max(int((pixels(files[k]) - pixels(reference[k])).abs().max()) for k in files)
            same = f"no: up to {diff}/255 apart"
        reference = reference or files
        # Steady rate: images after the first round of workers, over the time they took.
        k = workers * (batch_size or auto_batch_size(prior, len(inputs), workers))
        steady = 60.0 * (len(times) - k) / (times[-1] - times[k - 1]) if len(times) > k else float("nan")
        results.append({"label": label, "cores": workers * threads, "ok": summary.ok, "seconds": summary.seconds,
                        "ipm": summary.images_per_minute, "steady": steady,
                        "restore": statistics.mean(restore_s) if restore_s else float("nan"),
                        "psnr": summary.metrics.get("psnr", float("nan")), "same": same})
        print(f"  {summary.seconds:.1f} s, {summary.images_per_minute:.2f} images/min", file=sys.stderr)
    if ray_start is not None:
        import ray

        ray.shutdown()
    load_after = os.getloadavg()
    shutil.rmtree(work, ignore_errors=True)
    write_report(args, results, source, schedule, ray_start, load_before, load_after)
    print(f"wrote {args.out}", file=sys.stderr)


def write_report(args, results, source, schedule, ray_start, load_before, load_after) -> None:  # noqa: ANN001
    base = results[0]["ipm"] or float("nan")
    lines = [
        "# Batch throughput",
        "",
        "Images per minute of `dgp batch` with 1 and 2 local workers and with Ray, measured by "
        "`benchmarks/batch_throughput.py` on the development machine (CPU only).",
        "",
        f"- prior: `{args.prior}`" + (f" ({args.prior_note})" if args.prior_note else ""),
        f"- task: {args.task} with `--degrade`; {args.images} images from {source}",
        f"- schedule: preset `{schedule.name}`, {schedule.total_iterations} iterations over "
        f"{len(schedule.stages)} stages, {schedule.n_candidates} latent-search candidates"
        + (f" (`--iterations-scale {args.iterations_scale}`" if args.iterations_scale else " (the prior's setting")
        + (f", `--candidates {args.candidates}`)" if args.candidates is not None else ")"),
        f"- machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}; one torch thread per worker unless the "
        "configuration says otherwise",
        f"- load average (1 min) {load_before[0]:.1f} before and {load_after[0]:.1f} after: other jobs shared the "
        "cores during the measurement, so the figures are lower bounds and noisy" if load_before[0] > 1.0 else
        f"- load average (1 min) {load_before[0]:.1f} before and {load_after[0]:.1f} after",
        "",
        "| configuration | images | wall time (s) | images / minute | speed-up | steady images / minute "
        "| mean restore per image (s) | mean PSNR (dB) | outputs identical to 1 worker |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        lines.append(f"| {r['label']} | {r['ok']} | {r['seconds']:.1f} | {r['ipm']:.2f} | {r['ipm'] / base:.2f}x | "
                     f"{r['steady']:.2f} | {r['restore']:.1f} | {r['psnr']:.2f} | {r['same']} |")
    single = next((r for r in results if "one image at a time (`--batch-size 1`)" in r["label"]), None)
    if single is not None:
        faster = [f"{r['label']}: {r['ipm'] / single['ipm']:.2f}x" for r in results
                  if r is not single and r["cores"] >= single["cores"]]
        lines += [
            "",
            f"Against one image at a time on all {os.cpu_count()} cores (`--batch-size 1`, "
            f"{single['seconds']:.1f} s), the configurations that use every core: " + "; ".join(faster) + ".",
        ]
    lines += [
        "",
        "Wall time counts from the start of the run to its last manifest row, so it includes starting the "
        "workers (spawning processes, or Ray actors that fetch the prior from the object store); \"steady\" "
        "counts only the images after the first round (one image per worker, or one batch), over the time "
        "they took, so it leaves start-up out"
        + (f"; starting the local Ray instance took a further {ray_start:.1f} s." if ray_start is not None else "."),
        "Images per minute grow with the workers only while there are free cores: on a machine whose cores are "
        "busy with other work, a second worker mostly slows the first down (see \"mean restore per image\"). "
        "Restoration time is about proportional to the iterations of the schedule, so images per minute scale "
        "inversely with `--iterations-scale`.",
        "",
        "The batched engine (`dgp batch`'s default, or `--batch-size N`) runs a batch's images through one "
        "stacked generator, which uses a core better than one small image at a time; given several torch "
        "threads (as `dgp batch` with one worker has by default) it splits the batch into one group per thread, "
        "each tuned in a thread of its own. Those threads share one process (and Python's global interpreter "
        "lock for what they issue from Python; the forward passes are replayed without it); worker processes "
        "(`--workers`, each tuning its own batch on its own core) share nothing, which the last configuration "
        "measures against the one before it. The batched engine's results equal "
        "one-at-a-time restoration only within float tolerance, and the optimisation amplifies those "
        "differences over the iterations (last column), so results depend on which images shared a batch; "
        "`--batch-size 1` restores one image at a time, where results do not depend on how the work is split.",
        "",
        "Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch_throughput.py "
        + shlex.join(sys.argv[1:]) + "`",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
