"""Does ``torch.compile`` pay off for one reconstruction on a CPU? Compile time against the time it saves.

Usage::

    .venv/bin/python benchmarks/compile_check.py [--prior cifar10] [--threads 2] [--steps 30] [--batch 1]

Compiles the loss of one lean single-image step (generator forward, degradation, discriminator features,
feature distance; the backward pass through AOTAutograd), or with ``--batch B`` of one stacked group of B
images as the batched engine runs it (per-image generators, one stacked forward pass), and times, eager and
compiled: the first call (for the compiled one, tracing and code generation), and steady-state forward plus
backward per step. Run it twice to see the warm-cache figure: the inductor cache under ``/tmp/torchinductor_$USER``
survives the process. Prints its figures; writes nothing. The engine does not compile (the README's Speed
bullet and docs/speed-notes.md say why).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dgp.allocator import keep_freed_memory
from dgp.degradations import parse_degradation
from dgp.objective import Objective
from dgp.priors.layers import constant_network
from dgp.priors.registry import load_prior
from dgp.reconstruct import StackedGenerators, TunedGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", default="cifar10")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=30, help="steady-state steps timed")
    parser.add_argument("--batch", type=int, default=1, help="images in the group (1: the lean path)")
    args = parser.parse_args()
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    size = (prior.resolution, prior.resolution)
    deg = parse_degradation("gray", size=size)
    b = args.batch
    obs = deg.observe(torch.rand(b, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    with constant_network(prior.D):
        objective = Objective(prior.D, deg.lift(obs, size))
        kind = TunedGenerator if b == 1 else StackedGenerators
        tuned = kind(prior.G, torch.zeros(b, dtype=torch.long), True, True)
        params = [p for group in tuned.groups for p in group]
        z = torch.zeros(b, prior.G.dim_z, requires_grad=True)

        def loss(latent: torch.Tensor) -> torch.Tensor:
            x = deg.lift(deg(tuned(latent, False)), size)
            return objective(x, latent, objective.num_features, 1.0, 0.0, 0.0).total.sum()

        def step(fn) -> float:  # noqa: ANN001
            for p in [*params, z]:
                p.grad = None
            start = time.perf_counter()
            fn(z).backward()
            return time.perf_counter() - start

        rows = []
        for name, fn in (("eager", loss), ("compiled", torch.compile(loss))):
            first = step(fn)
            step(fn)
            steady = statistics.median(step(fn) for _ in range(args.steps))
            rows.append((name, first, steady))
            print(f"{name:9s} first call {first:7.2f} s   steady forward+backward {1e3 * steady:6.1f} ms/step",
                  flush=True)
    (_, _, eager), (_, first, compiled) = rows
    saved = eager - compiled
    print(f"compiled steps are {100 * saved / eager:.0f}% faster; the first call pays back after "
          f"{first / saved:.0f} steps" if saved > 0 else "compiled steps are not faster")


if __name__ == "__main__":
    main()
