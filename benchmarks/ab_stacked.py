"""A/B of the stacked forward pass: this checkout's ``dgp/priors/stacked.py`` against a git revision's.

Usage::

    .venv/bin/python benchmarks/ab_stacked.py --old HEAD~1 [--batch 32] [--rounds 30] [--steps 3] [--engine]

Timings on a shared machine drift by 20-30% within minutes, more than most single changes to the engine are
worth, so the two versions run in alternating rounds in one process (the order flips every round) and the
figure to read is the median of the per-round ratios. Each round times ``--steps`` fully-open optimisation
steps of ``--batch`` grayscale observations with the shipped prior (D-feature loss, no latent search), after a
warm-up run, as ``profile_reconstruction.py`` times them: by default one stacked group on one thread (the unit
``DGPReconstructor.batch`` runs in each thread), with ``--engine`` the whole batch through
``DGPReconstructor.batch`` on all threads, set-up excluded. Nothing is written.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import torch

import dgp.reconstruct as reconstruct
from dgp.allocator import keep_freed_memory
from dgp.priors import stacked
from dgp.priors.registry import load_prior
from profile_reconstruction import engine_step_seconds, group_step_seconds  # this script's folder

REPO = Path(__file__).resolve().parents[1]


def stacked_at(revision: str, folder: Path) -> ModuleType:
    """``dgp.priors.stacked`` as it was at ``revision`` (read with ``git show``), loaded as a module."""
    source = subprocess.run(["git", "show", f"{revision}:src/dgp/priors/stacked.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = folder / "stacked_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("dgp.priors.stacked_old", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def use(module: ModuleType) -> None:
    """Make ``StackedGenerators`` run ``module``'s stacked pass."""
    reconstruct.StackedLayout = module.StackedLayout
    reconstruct.stacked_generator_forward = module.stacked_generator_forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="git revision of the version to compare against")
    parser.add_argument("--prior", default="cifar10")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--engine", action="store_true", help="the whole batch on all threads (default: one "
                        "stacked group on one thread)")
    args = parser.parse_args()
    if min(args.batch, args.rounds, args.steps) < 1:
        parser.error("--batch, --rounds and --steps must be at least 1")
    keep_freed_memory()  # as the dgp command does
    if not args.engine:
        torch.set_num_threads(1)
    prior = load_prior(args.prior)
    with tempfile.TemporaryDirectory() as folder:
        try:
            old = stacked_at(args.old, Path(folder))
        except subprocess.CalledProcessError as exc:
            sys.exit(f"error: cannot read src/dgp/priors/stacked.py at {args.old}: {exc.stderr.strip()}")
    versions = {args.old: old, "this checkout": stacked}
    if args.engine:
        def timer() -> float:
            return engine_step_seconds(prior, args.batch, args.steps)
    else:
        def timer() -> float:
            return group_step_seconds(prior, args.batch, args.steps, shared=False)
    times: dict[str, list[float]] = {name: [] for name in versions}
    for name, module in versions.items():  # warm-up
        use(module)
        timer()
    for r in range(args.rounds):
        for name in (list(versions) if r % 2 == 0 else list(reversed(versions))):
            use(versions[name])
            times[name].append(timer())
    use(stacked)
    ratios = [a / b for a, b in zip(times[args.old], times["this checkout"])]
    unit = f"{args.batch} images, " + ("the engine on all threads" if args.engine else "one group on 1 thread")
    print(f"{unit}, {args.rounds} rounds of {args.steps} steps")
    for name, t in times.items():
        print(f"  {name}: median {1e3 * statistics.median(t):.1f} ms a step "
              f"({1e3 * min(t):.1f}-{1e3 * max(t):.1f})")
    print(f"  speed-up of this checkout: median of rounds {statistics.median(ratios):.3f}x, mean "
          f"{statistics.mean(ratios):.3f}x, range {min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
