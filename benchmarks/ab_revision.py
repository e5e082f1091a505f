"""A/B of whole reconstructions: this checkout against a git revision, in alternating processes.

Usage::

    .venv/bin/python benchmarks/ab_revision.py --old HEAD~1 [--batch 64] [--rounds 6] [--iterations 30]

``ab_stacked.py`` swaps the stacked pass alone inside one process; a change anywhere else (the optimizer step,
the layers, the recordings, the set-up) needs the whole package of each version. This script checks the revision
out into a temporary git worktree and times ``speed.py``'s measurement (``time_path``: a 1-step warm-up, a 1-step
and an ``--iterations``-step reconstruction of ``--batch`` grayscale observations with the shipped prior, through
``DGPReconstructor`` as the ``dgp`` command runs it) in a fresh process per version and round, the order flipping
every round, since timings on a shared machine drift by more than most changes are worth. It prints each round and,
for the whole reconstruction, a step alone and the set-up, the medians and the median of the per-round ratios
(above 1: this checkout is faster). Both versions run with this checkout's Python environment; nothing is written
outside the temporary worktree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_MEASURE = """
import json, sys
from dgp.allocator import keep_freed_memory
keep_freed_memory()  # as the dgp command does
from dgp.priors.registry import load_prior
from speed import time_path
timing = time_path(load_prior("cifar10"), "lean", int(sys.argv[1]), int(sys.argv[2]))
print(json.dumps({"whole": timing.whole, "step": timing.step, "setup": timing.setup}))
"""


def measure(tree: Path, batch: int, iterations: int) -> dict[str, float]:
    """Seconds of a whole reconstruction, of a step alone and of the set-up, with ``tree``'s package."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree / 'benchmarks'}"}
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(batch), str(iterations)], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: the measurement failed in {tree}:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="git revision of the version to compare against")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=30)
    args = parser.parse_args()
    if min(args.batch, args.rounds) < 1 or args.iterations < 2:
        parser.error("--batch and --rounds must be at least 1, --iterations at least 2")
    with tempfile.TemporaryDirectory() as folder:
        old_tree = Path(folder) / "old"
        added = subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.old], cwd=REPO,
                               capture_output=True, text=True)
        if added.returncode:
            sys.exit(f"error: cannot check out {args.old}: {added.stderr.strip()}")
        try:
            trees = {args.old: old_tree, "this checkout": REPO}
            results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for r in range(args.rounds):
                for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
                    results[name].append(measure(trees[name], args.batch, args.iterations))
                    row = results[name][-1]
                    print(f"round {r + 1} {name}: whole {row['whole']:.3f} s, step {1e3 * row['step']:.1f} ms, "
                          f"set-up {1e3 * row['setup']:.0f} ms", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO, capture_output=True)
    print(f"{args.batch} images, {args.iterations} iterations, {args.rounds} rounds")
    for key, label in (("whole", "whole reconstruction"), ("step", "a step alone"), ("setup", "set-up")):
        old = [row[key] for row in results[args.old]]
        new = [row[key] for row in results["this checkout"]]
        ratios = [a / b for a, b in zip(old, new) if b > 0]
        print(f"  {label}: {args.old} {statistics.median(old):.4f} s, this checkout {statistics.median(new):.4f} s, "
              f"speed-up median of rounds {statistics.median(ratios):.3f}x (range {min(ratios):.3f}-"
              f"{max(ratios):.3f})")


if __name__ == "__main__":
    main()
