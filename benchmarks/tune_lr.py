"""Choose a prior's generator learning-rate scale on TRAINING images (never on the test images of the benchmark).

Usage::

    .venv/bin/python benchmarks/tune_lr.py --data <unpacked CIFAR-10>/train [--prior FOLDER] [--n 6]
        [--scales 1,4,16] [--tasks sr4,inpainting,denoise0.1,reconstruction] [-o runs/tune-lr]

The released presets' generator learning rates were tuned for 128-256 px ImageNet BigGANs. For each scale this
copies the prior folder with ``presets.lr_G_scale`` set in its card (what :func:`dgp.pipeline.default_schedule`
reads), runs ``dgp bench quality`` on ``--n`` balanced images of the given folder with DGP's two restoration
methods, and tabulates mean PSNR per task and scale into ``OUT/README.md``. Runs resume like the benchmark.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path


def shipped_prior_folder() -> Path:
    return Path(str(resources.files("dgp") / "assets" / "priors" / "cifar10"))


def prior_with_scale(source: Path, scale: float, out: Path) -> Path:
    """A copy of the prior folder ``source`` whose card sets ``presets.lr_G_scale = scale``."""
    folder = out / f"prior-lr{scale:g}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("G_ema.safetensors", "D.safetensors"):
        shutil.copy2(source / name, folder / name)
    card = json.loads((source / "card.json").read_text())
    card.setdefault("presets", {})["lr_G_scale"] = scale
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder


def mean_psnr(results: Path) -> dict[tuple[str, str], float]:
    """Mean PSNR per (task, method) from the summary of a benchmark's ``results.json``."""
    summary = json.loads(results.read_text())["summary"]
    return {(task, method): s["psnr"] for task, methods in summary.items() for method, s in methods.items()
            if s.get("psnr") is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="training image folder (class sub-folders)")
    parser.add_argument("--prior", type=Path, default=None, help="prior folder (default: the shipped one)")
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--scales", default="1,4,16")
    parser.add_argument("--tasks", default="sr4,inpainting,denoise0.1,reconstruction")
    parser.add_argument("--methods", default="dgp,dgp-sr-mse")
    parser.add_argument("-o", "--output", type=Path, default=Path("runs/tune-lr"))
    args = parser.parse_args()
    source = args.prior or shipped_prior_folder()
    scales = [float(s) for s in args.scales.split(",")]
    dgp = Path(sys.executable).with_name("dgp")
    table: dict[float, dict[tuple[str, str], float]] = {}
    for scale in scales:
        folder = prior_with_scale(source, scale, args.output)
        run = args.output / f"bench-lr{scale:g}"
        command = [str(dgp), "bench", "quality", "--data", str(args.data), "--n", str(args.n), "--prior", str(folder),
                   "--tasks", args.tasks, "--methods", args.methods, "--examples", "0", "-o", str(run)]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
        table[scale] = mean_psnr(run / "results.json")
    keys = sorted({k for t in table.values() for k in t})
    lines = ["# Generator learning-rate scale, chosen on training images", "",
             f"`benchmarks/tune_lr.py --data {args.data} --n {args.n} --scales {args.scales}`: mean PSNR (dB) of "
             f"{args.n} training images per task (inpainting: inside the hole), prior `{source}`, each preset's "
             "generator learning rates multiplied by the scale.", "",
             "| task | method | " + " | ".join(f"x{s:g}" for s in scales) + " |",
             "| --- | --- | " + " | ".join("---" for _ in scales) + " |"]
    for task, method in keys:
        cells = [f"{table[s][(task, method)]:.2f}" if (task, method) in table[s] else "-" for s in scales]
        lines.append(f"| {task} | {method} | " + " | ".join(cells) + " |")
    (args.output / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
