"""The latent searches of a batch, with shared draws against a seed per image.

Usage::

    .venv/bin/python benchmarks/search_sharing.py [--prior cifar10] [--images 16] [--rounds 3] [--threads 2]
        [--quality SEEDS]

Times :func:`dgp.reconstruct.search_latents` for ``--images`` colorization targets (random images, gray) with
the prior's colorization schedule, in alternating rounds: every image's generator seeded alike (as
``DGPReconstructor.batch`` and ``dgp batch`` do, so the images share one draw of candidates), and each seeded
on its own (every image renders and scores its own candidates). With ``--quality SEEDS`` it also colorizes
``--images`` CIFAR-10 test images (as ``batch_throughput.py`` picks them; samples of the prior without the
shared data) through the batched engine, full preset, both ways for each of ``SEEDS`` run seeds, and prints
each run's mean PSNR: sharing one draw must not cost quality. Prints its figures; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from batch_throughput import gather_images  # this script's folder
from dgp.allocator import keep_freed_memory
from dgp.batch import image_seed, list_inputs
from dgp.degradations import parse_degradation
from dgp.objective import Objective
from dgp.pipeline import default_schedule, finish, load_inputs
from dgp.priors.layers import constant_network
from dgp.priors.registry import Prior, load_prior
from dgp.reconstruct import DGPReconstructor, search_latents


def quality(prior: Prior, images: int, seeds: int) -> None:
    """Mean PSNR of full colorizations through the batched engine, one draw shared or a seed per image."""
    schedule = default_schedule(prior, "colorization")
    gray = parse_degradation("gray", size=(prior.resolution, prior.resolution))
    with tempfile.TemporaryDirectory() as folder:
        source = gather_images(Path(folder), images, prior)
        inputs = list_inputs(Path(folder))
        loaded = [load_inputs(prior, gray, item.path, degrade=True) for item in inputs]
    print(f"quality: {len(inputs)} {source}, colorization preset, batched engine")
    for seed in range(seeds):
        for label in ("shared draws", "a seed per image"):
            generators = [torch.Generator().manual_seed(seed if label == "shared draws"
                                                        else image_seed(seed, item.name)) for item in inputs]
            start = time.perf_counter()
            results = DGPReconstructor(prior, schedule).batch([obs for obs, _ in loaded], gray,
                                                              generators=generators)
            seconds = time.perf_counter() - start
            psnrs = [finish(r, gray, ref)[1]["psnr"] for r, (_, ref) in zip(results, loaded)]
            print(f"  seed {seed}, {label:17s} mean PSNR {statistics.mean(psnrs):.2f} dB  ({seconds:.1f} s, "
                  f"search {statistics.mean(r.timings['search'] for r in results):.2f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", default="cifar10")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quality", type=int, default=0, metavar="SEEDS",
                        help="also compare full colorizations' PSNR for this many run seeds")
    args = parser.parse_args()
    if args.images < 1 or args.rounds < 1 or args.quality < 0:
        parser.error("--images and --rounds must be at least 1, --quality at least 0")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    schedule = default_schedule(prior, "colorization")
    size = (prior.resolution, prior.resolution)
    gray = parse_degradation("gray", size=size)
    clean = torch.rand(args.images, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    times: dict[str, list[float]] = {"shared draws (one seed)": [], "a seed per image": []}
    with constant_network(prior.D):
        objective = Objective(prior.D, gray.lift(gray.observe(clean), size))
        objectives = [objective.subset(i) for i in range(args.images)]
        for _ in range(args.rounds):
            for label, times_of in times.items():
                shared = label.startswith("shared")
                generators = [torch.Generator().manual_seed(0 if shared else i) for i in range(args.images)]
                start = time.perf_counter()
                search_latents(prior, objectives, [gray] * args.images, schedule, [None] * args.images, generators)
                times_of.append(time.perf_counter() - start)
    print(f"{args.images} images, {schedule.n_candidates} candidates each, prior {args.prior}, "
          f"{args.threads} threads, {args.rounds} rounds")
    for label, values in times.items():
        print(f"{label:26s} {statistics.median(values):6.2f} s  ({min(values):.2f}-{max(values):.2f})")
    if args.quality:
        quality(prior, args.images, args.quality)


if __name__ == "__main__":
    main()
