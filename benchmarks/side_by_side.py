"""What running groups of the batched engine side by side costs: as threads of one process, and as processes.

Usage::

    .venv/bin/python benchmarks/side_by_side.py [--batch 8] [--steps 10] [--rounds 5]

``DGPReconstructor.batch`` tunes one group of images per thread. This times one group's fully-open steps
alone on one thread, two groups side by side as two threads of this process (as the engine runs them), and
two groups side by side as two worker processes, for the shipped prior and for the same architecture with
8-channel layers (the prior's operators with almost no arithmetic: what issuing them costs). Set-up and each
run's first step (which records the forward passes) are excluded: a run of ``--steps`` + 1 steps minus a run
of 1. Medians of ``--rounds``; nothing is written.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from typing import Any

import torch

from dgp.allocator import keep_freed_memory
from dgp.priors.layers import constant_network
from dgp.priors.registry import load_prior
from profile_reconstruction import group_runner, in_threads, thin_prior  # this script's folder


def group_runs(thin: bool, batch: int, steps: int) -> tuple[Callable[[], float], Callable[[], float]]:
    """Two functions that tune one group of ``batch`` images of the shipped prior (or its 8-channel model) on
    one intra-op thread, with D a constant network as reconstructions run it, for 1 and for ``steps + 1``
    steps, and return the seconds of those steps. Their difference is ``steps`` steps without the set-up and
    the first step (which records the forward passes)."""
    prior = load_prior("cifar10")
    if thin:
        prior = thin_prior(prior)

    def runs(count: int) -> Callable[[], float]:
        run = group_runner(prior, batch, count)

        def timed() -> float:
            torch.set_num_threads(1)
            with constant_network(prior.D):
                return run()

        return timed

    one, more = runs(1), runs(steps + 1)
    one()  # first calls
    return one, more


def process_worker(thin: bool, batch: int, steps: int, rounds: int, barrier: Barrier, results: Any) -> None:
    """Body of a worker process: one group, its long and its 1-step run each started together with the other
    worker's in every round."""
    keep_freed_memory()
    one, more = group_runs(thin, batch, steps)
    for _ in range(rounds):
        barrier.wait()
        long = more()
        barrier.wait()
        results.put(1e3 * (long - one()) / steps)


def measure(thin: bool, batch: int, steps: int, rounds: int) -> dict[str, float]:
    """Median ms per step of a group alone, as two threads and as two processes (the slower group counts)."""
    one, more = group_runs(thin, batch, steps)
    alone = [1e3 * (more() - one()) / steps for _ in range(rounds)]
    threads = [1e3 * (in_threads(more, 2) - in_threads(one, 2)) / steps for _ in range(rounds)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=process_worker, args=(thin, batch, steps, rounds, barrier, results))
               for _ in range(2)]
    for w in workers:
        w.start()
    values = [results.get() for _ in range(2 * rounds)]
    for w in workers:
        w.join()
    processes = [max(values[2 * i:2 * i + 2]) for i in range(rounds)]
    return {k: statistics.median(v) for k, v in (("alone", alone), ("threads", threads), ("processes", processes))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images per group")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if min(args.batch, args.steps, args.rounds) < 1:
        parser.error("--batch, --steps and --rounds must be at least 1")
    keep_freed_memory()  # as the dgp command does
    print(f"ms per step of a group of {args.batch} images on one thread (median of {args.rounds} rounds of "
          f"{args.steps} steps)")
    print("| model | alone | two side by side, threads | two side by side, processes |")
    print("| --- | --- | --- | --- |")
    for thin in (False, True):
        m = measure(thin, args.batch, args.steps, args.rounds)
        name = "8-channel layers" if thin else "shipped prior"
        print(f"| {name} | {m['alone']:.1f} | {m['threads']:.1f} | {m['processes']:.1f} |")


if __name__ == "__main__":
    main()
