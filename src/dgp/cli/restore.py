"""Restoration and editing commands: colorize, inpaint, super-resolve, denoise, restore, reconstruct,
jitter, transfer, morph, sample.

Each writes into one output folder, atomically: the files are written to a temporary folder that is renamed
into place at the end, so an interrupted run leaves nothing half-written, and an existing folder is
replaced only with ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import dgp
from dgp.cli import app
from dgp.defaults import DEFAULT_PRIOR, JITTER_SIGMAS

if TYPE_CHECKING:
    import torch

    from dgp.pipeline import Restoration
    from dgp.priors.registry import Prior
    from dgp.reconstruct import Result, StepEvent
    from dgp.schedule import Schedule

# The commands import torch and the library where they run, not here: `dgp --help` and a mistyped command line
# then answer without loading torch (about 1.5 s).

console = Console(stderr=True)

# Options shared by the commands (typer needs them spelled out per command).
PriorOpt = typer.Option(DEFAULT_PRIOR, "--prior", help="Prior name (see `dgp priors list`) or a prior folder.")
WeightsOpt = typer.Option(None, "--weights", metavar="DIR", help="Folder of released BigGAN weights "
                          "(default: $DGP_WEIGHTS).")
ClassOpt = typer.Option(None, "--class", help="Class id or name; default: chosen by the latent search.")
PresetOpt = typer.Option(None, "--preset", help="Schedule preset (colorization, sr, sr-mse, inpainting, "
                         "denoising, reconstruction, manipulation, morphing); default: the task's.")
ScaleOpt = typer.Option(None, "--iterations-scale", min=0.001,
                        help="Multiply every stage's iterations (default: the prior's setting).")
CandOpt = typer.Option(None, "--candidates", min=0, help="Latent-search candidates (default: the prior's).")
SeedOpt = typer.Option(0, "--seed", help="Random seed (latent search, noise, random masks).")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N.")
RefOpt = typer.Option(None, "--reference", exists=False, help="Clean image, to score the result against.")
DegradeOpt = typer.Option(False, "--degrade", help="The input is clean: make the observation from it "
                          "(for demos and scoring).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an existing output folder.")


def _out_option(help_text: str = "Output folder (default: <input>-<task>).") -> Any:
    return typer.Option(None, "-o", "--output", help=help_text)


def _device(name: str) -> torch.device:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return device


def _load(prior: str, weights: Path | None, device: str) -> Prior:
    from dgp.priors.registry import load_prior

    return load_prior(prior, weights=weights, device=_device(device))


@contextmanager
def output_folder(path: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` that becomes ``path`` when the block succeeds."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp creates 0700; the result is an ordinary folder
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def progress_callback(label: str) -> Iterator[Callable[[StepEvent], None]]:
    """A callback that drives a progress bar on a terminal (and does nothing otherwise)."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                        disable=not console.is_terminal, transient=False)
    state: dict[str, Any] = {}

    def callback(event: StepEvent) -> None:
        if event.stage < 0:
            key, desc, info = "search", f"{label}: latent search", ""
        else:
            key, desc = "stages", f"{label}: stage {event.stage + 1}/{event.num_stages}"
            info = f"loss {event.losses.get('loss', float('nan')):.4f}"
        if key not in state:
            state[key] = progress.add_task(desc, total=event.total, info=info)
        progress.update(state[key], completed=event.step, description=desc, info=info)

    with progress:
        yield callback


def _environment(device: str) -> dict[str, Any]:
    import torch

    return {"dgp": dgp.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": device}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _restore_command(task: str, image: Path, output: Path | None, degradation_text: str, *, mask: Path | None,
                     prior_name: str, weights: Path | None, class_spec: str | None, preset: str | None,
                     iterations_scale: float | None, candidates: int | None, seed: int, device: str,
                     reference: Path | None, degrade: bool, overwrite: bool) -> None:
    import torch

    from dgp.degradations import parse_degradation
    from dgp.pipeline import (check_mask_fits, default_schedule, load_inputs, operators, preset_for, restore,
                              run_record)

    prior = _load(prior_name, weights, device)
    size = (prior.resolution, prior.resolution)
    degradation = parse_degradation(degradation_text, size=size, generator=torch.Generator().manual_seed(seed),
                                    mask_path=mask)
    if mask is not None:
        if not any(op.name == "mask" for op in operators(degradation)):
            raise ValueError(f"--mask is given but the degradation {degradation.name!r} has no 'mask' token "
                             f"(e.g. -d {degradation.name}+mask)")
        check_mask_fits(mask, image)
    preset = preset or preset_for(degradation)
    schedule = default_schedule(prior, preset, iterations_scale, candidates)
    class_id = prior.class_id(class_spec) if class_spec is not None else None
    observation, ref = load_inputs(prior, degradation, image, degrade=degrade, reference=reference, seed=seed)
    out = output or Path(f"{image.stem}-{task}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite to replace it)")
    with progress_callback(task) as callback:
        restoration = restore(prior, degradation, schedule, observation=observation, reference=ref,
                              class_id=class_id, seed=seed, callbacks=[callback])
    record = run_record(restoration, command=task, input=str(image), reference=str(reference) if reference else None,
                        degrade=degrade, degradation=degradation.name, mask=str(mask) if mask else None,
                        prior=prior.name, class_name=prior.class_names[restoration.result.class_id],
                        seed=seed, preset=preset, schedule=schedule.to_dict(), environment=_environment(device))
    with output_folder(out, overwrite) as tmp:
        _write_restoration(tmp, restoration)
        _write_json(tmp / "run.json", record)
    _report(out, restoration, prior)


def _write_restoration(folder: Path, restoration: Restoration) -> None:
    import torch

    from dgp.imageio import save_grid, save_image

    r = restoration.result
    save_image(restoration.output, folder / "result.png")
    save_image(restoration.observation, folder / "observation.png")
    sheet = [r.target, restoration.output]
    if restoration.reference is not None:
        sheet.append(restoration.reference)
        save_image(restoration.reference, folder / "reference.png")
    side = r.target.shape[-1]
    save_grid(torch.cat(sheet), folder / "comparison.png", nrow=len(sheet), scale=max(1, 128 // side))


def _report(out: Path, restoration: Restoration, prior: Prior) -> None:
    r = restoration.result
    line = f"wrote {out}/ (class {r.class_id} {prior.class_names[r.class_id]!r}, {restoration.seconds:.1f} s"
    if restoration.metrics:
        m = restoration.metrics
        line += (f", PSNR {m['psnr']:.2f} dB / SSIM {m['ssim']:.3f} vs observation "
                 f"{m['observation_psnr']:.2f} dB / {m['observation_ssim']:.3f}")
    console.print(line + ")", highlight=False)


@app.command("colorize", epilog="Example: dgp colorize old_photo.png -o colorized/")
def colorize_command(
    image: Path = typer.Argument(..., help="Grayscale (or colour, with --degrade) image."),
    output: Path | None = _out_option(), prior: str = PriorOpt, weights: Path | None = WeightsOpt,
    class_: str | None = ClassOpt, preset: str | None = PresetOpt, iterations_scale: float | None = ScaleOpt,
    candidates: int | None = CandOpt, seed: int = SeedOpt, device: str = DeviceOpt,
    reference: Path | None = RefOpt, degrade: bool = DegradeOpt, overwrite: bool = OverwriteOpt,
) -> None:
    """Colorize a grayscale image (the output keeps the input's lightness)."""
    _restore_command("colorize", image, output, "gray", mask=None, prior_name=prior, weights=weights,
                     class_spec=class_, preset=preset, iterations_scale=iterations_scale, candidates=candidates,
                     seed=seed, device=device, reference=reference, degrade=degrade, overwrite=overwrite)


@app.command("inpaint", epilog="Examples: dgp inpaint photo.png --mask mask.png ; "
             "dgp inpaint clean.png --degrade --hole --reference clean.png")
def inpaint_command(
    image: Path = typer.Argument(..., help="Image with missing pixels (or clean, with --degrade)."),
    mask: Path | None = typer.Option(None, "--mask", help="Mask image: white = missing pixels."),
    hole: bool = typer.Option(False, "--hole", help="Use the paper's centred square hole (default without "
                              "--mask)."),
    boxes: int = typer.Option(0, "--boxes", min=0, help="Use N random boxes (seeded)."),
    strokes: bool = typer.Option(False, "--strokes", help="Use random free-form strokes (seeded)."),
    output: Path | None = _out_option(), prior: str = PriorOpt, weights: Path | None = WeightsOpt,
    class_: str | None = ClassOpt, preset: str | None = PresetOpt, iterations_scale: float | None = ScaleOpt,
    candidates: int | None = CandOpt, seed: int = SeedOpt, device: str = DeviceOpt,
    reference: Path | None = RefOpt, degrade: bool = DegradeOpt, overwrite: bool = OverwriteOpt,
) -> None:
    """Fill in missing pixels given by a mask, the centre hole, random boxes or strokes."""
    chosen = [name for name, on in (("mask", mask is not None), ("hole", hole), ("boxes", boxes > 0),
                                    ("strokes", strokes)) if on]
    if len(chosen) > 1:
        raise ValueError(f"choose one of --mask, --hole, --boxes, --strokes (got {', '.join(chosen)})")
    text = {"mask": "mask", "boxes": f"boxes{boxes}", "strokes": "strokes"}.get(chosen[0] if chosen else "", "hole")
    _restore_command("inpaint", image, output, text, mask=mask, prior_name=prior, weights=weights,
                     class_spec=class_, preset=preset, iterations_scale=iterations_scale, candidates=candidates,
                     seed=seed, device=device, reference=reference, degrade=degrade, overwrite=overwrite)


@app.command("super-resolve", epilog="Example: dgp super-resolve small.png --factor 4 --preset sr-mse")
def super_resolve_command(
    image: Path = typer.Argument(..., help="Low-resolution image (or clean, with --degrade)."),
    factor: int = typer.Option(4, "--factor", help="Upscaling factor: 2, 4 or 8."),
    output: Path | None = _out_option(), prior: str = PriorOpt, weights: Path | None = WeightsOpt,
    class_: str | None = ClassOpt, preset: str | None = PresetOpt, iterations_scale: float | None = ScaleOpt,
    candidates: int | None = CandOpt, seed: int = SeedOpt, device: str = DeviceOpt,
    reference: Path | None = RefOpt, degrade: bool = DegradeOpt, overwrite: bool = OverwriteOpt,
) -> None:
    """Upscale an image by 2, 4 or 8 to the prior's resolution."""
    if factor not in (2, 4, 8):
        raise ValueError(f"--factor must be 2, 4 or 8, got {factor}")
    _restore_command("super-resolve", image, output, f"down{factor}", mask=None, prior_name=prior,
                     weights=weights, class_spec=class_, preset=preset, iterations_scale=iterations_scale,
                     candidates=candidates, seed=seed, device=device, reference=reference, degrade=degrade,
                     overwrite=overwrite)


@app.command("denoise", epilog="Example: dgp denoise clean.png --degrade --sigma 0.1 --reference clean.png")
def denoise_command(
    image: Path = typer.Argument(..., help="Noisy image (or clean, with --degrade)."),
    sigma: float = typer.Option(0.1, "--sigma", help="Noise standard deviation on the [0, 1] pixel scale."),
    output: Path | None = _out_option(), prior: str = PriorOpt, weights: Path | None = WeightsOpt,
    class_: str | None = ClassOpt, preset: str | None = PresetOpt, iterations_scale: float | None = ScaleOpt,
    candidates: int | None = CandOpt, seed: int = SeedOpt, device: str = DeviceOpt,
    reference: Path | None = RefOpt, degrade: bool = DegradeOpt, overwrite: bool = OverwriteOpt,
) -> None:
    """Remove additive Gaussian noise of a known sigma."""
    if not 0.0 < sigma <= 1.0:
        raise ValueError(f"--sigma must be in (0, 1], got {sigma}")
    _restore_command("denoise", image, output, f"noise{sigma:g}", mask=None, prior_name=prior, weights=weights,
                     class_spec=class_, preset=preset, iterations_scale=iterations_scale, candidates=candidates,
                     seed=seed, device=device, reference=reference, degrade=degrade, overwrite=overwrite)


@app.command("restore", epilog="Example: dgp restore clean.png --degradation down2+gray+hole --degrade "
             "--reference clean.png")
def restore_command(
    image: Path = typer.Argument(..., help="Degraded image (or clean, with --degrade)."),
    degradation: str = typer.Option(..., "--degradation", "-d", help="Chain applied left to right, e.g. "
                                    "gray+hole, down2+gray+hole, noise0.1, boxes3, strokes, mask."),
    mask: Path | None = typer.Option(None, "--mask", help="Mask image for the `mask` token (white = missing)."),
    output: Path | None = _out_option(), prior: str = PriorOpt, weights: Path | None = WeightsOpt,
    class_: str | None = ClassOpt, preset: str | None = PresetOpt, iterations_scale: float | None = ScaleOpt,
    candidates: int | None = CandOpt, seed: int = SeedOpt, device: str = DeviceOpt,
    reference: Path | None = RefOpt, degrade: bool = DegradeOpt, overwrite: bool = OverwriteOpt,
) -> None:
    """Restore an image degraded by any chain of degradations."""
    _restore_command("restore", image, output, degradation, mask=mask, prior_name=prior, weights=weights,
                     class_spec=class_, preset=preset, iterations_scale=iterations_scale, candidates=candidates,
                     seed=seed, device=device, reference=reference, degrade=degrade, overwrite=overwrite)


@app.command("reconstruct", epilog="Example: dgp reconstruct attacked.png  (adversarial purification)")
def reconstruct_command(
    image: Path = typer.Argument(..., help="Image to reconstruct (e.g. an adversarially attacked one)."),
    output: Path | None = _out_option(), prior: str = PriorOpt, weights: Path | None = WeightsOpt,
    class_: str | None = ClassOpt, preset: str | None = PresetOpt, iterations_scale: float | None = ScaleOpt,
    candidates: int | None = CandOpt, seed: int = SeedOpt, device: str = DeviceOpt,
    reference: Path | None = RefOpt, overwrite: bool = OverwriteOpt,
) -> None:
    """Reconstruct an image with the prior (GAN inversion; also an adversarial-defense purifier)."""
    _restore_command("reconstruct", image, output, "id", mask=None, prior_name=prior, weights=weights,
                     class_spec=class_, preset=preset, iterations_scale=iterations_scale, candidates=candidates,
                     seed=seed, device=device, reference=reference, degrade=False, overwrite=overwrite)


def _reconstruct_for_editing(prior: Prior, images: list[Path], schedule: Schedule, class_specs: list[str | None],
                             seed: int, label: str) -> list[Result]:
    """Reconstruct ``images`` (no degradation), each from ``seed``, through the batched engine (one image: the
    single-image path; several: on a CPU each in a thread of its own), whose progress bar follows the first."""
    import torch

    from dgp.degradations import parse_degradation
    from dgp.imageio import load_image
    from dgp.reconstruct import DGPReconstructor

    size = (prior.resolution, prior.resolution)
    degradation = parse_degradation("id", size=size)
    class_ids = [prior.class_id(c) if c is not None else None for c in class_specs]
    observations = [load_image(image, prior.resolution) for image in images]
    generators = [torch.Generator().manual_seed(seed) for _ in images]
    with progress_callback(label) as callback:
        return DGPReconstructor(prior, schedule, [callback]).batch(observations, degradation, class_ids, generators)


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be numbers separated by commas, got {text!r}") from None
    if not values:
        raise ValueError(f"{name} is empty")
    return values


@app.command("jitter", epilog="Example: dgp jitter dog.png --sigmas 0.3,0.5,0.7 -n 6")
def jitter_command(
    image: Path = typer.Argument(..., help="Image to reconstruct and jitter."),
    sigmas: str = typer.Option(",".join(str(s) for s in JITTER_SIGMAS), "--sigmas", help="Jitter strengths."),
    per_sigma: int = typer.Option(8, "-n", "--per-sigma", min=1, help="Samples per sigma."),
    output: Path | None = _out_option(), prior: str = PriorOpt, weights: Path | None = WeightsOpt,
    class_: str | None = ClassOpt, preset: str = typer.Option("manipulation", "--preset"),
    iterations_scale: float | None = ScaleOpt, candidates: int | None = CandOpt, seed: int = SeedOpt,
    device: str = DeviceOpt, overwrite: bool = OverwriteOpt,
) -> None:
    """Reconstruct an image, then render random variations z + sigma * eps around it."""
    import torch

    from dgp.imageio import save_grid, save_image
    from dgp.manipulate import jitter
    from dgp.pipeline import default_schedule

    values = _floats(sigmas, "--sigmas")
    p = _load(prior, weights, device)
    out = output or Path(f"{image.stem}-jitter")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite to replace it)")
    schedule = default_schedule(p, preset, iterations_scale, candidates)
    start = time.perf_counter()
    (result,) = _reconstruct_for_editing(p, [image], schedule, [class_], seed, "jitter")
    images = jitter(p, result, values, per_sigma, torch.Generator().manual_seed(seed + 1))
    with output_folder(out, overwrite) as tmp:
        save_image(result.image, tmp / "reconstruction.png")
        save_grid(images, tmp / "jitter.png", nrow=per_sigma)
        for i, img in enumerate(images):
            save_image(img, tmp / f"sigma{values[i // per_sigma]:g}_{i % per_sigma:02d}.png")
        _write_json(tmp / "run.json", {"command": "jitter", "input": str(image), "prior": p.name, "seed": seed,
                                       "class_id": result.class_id, "sigmas": values, "per_sigma": per_sigma,
                                       "schedule": schedule.to_dict(), "timings": result.timings,
                                       "seconds": round(time.perf_counter() - start, 3),
                                       "environment": _environment(device)})
    console.print(f"wrote {out}/ (jitter.png: one row per sigma {values})", highlight=False)


@app.command("transfer", epilog="Example: dgp transfer dog.png --to cat --to horse")
def transfer_command(
    image: Path = typer.Argument(..., help="Image to reconstruct and render under other classes."),
    to: list[str] = typer.Option(..., "--to", help="Target class (name or id); repeat for several."),
    output: Path | None = _out_option(), prior: str = PriorOpt, weights: Path | None = WeightsOpt,
    class_: str | None = ClassOpt, preset: str = typer.Option("manipulation", "--preset"),
    iterations_scale: float | None = ScaleOpt, candidates: int | None = CandOpt, seed: int = SeedOpt,
    device: str = DeviceOpt, overwrite: bool = OverwriteOpt,
) -> None:
    """Category transfer: the reconstruction rendered with other class embeddings."""
    import torch

    from dgp.imageio import save_grid, save_image
    from dgp.manipulate import transfer
    from dgp.pipeline import default_schedule

    p = _load(prior, weights, device)
    targets = [p.class_id(t) for t in to]
    out = output or Path(f"{image.stem}-transfer")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite to replace it)")
    schedule = default_schedule(p, preset, iterations_scale, candidates)
    (result,) = _reconstruct_for_editing(p, [image], schedule, [class_], seed, "transfer")
    images = transfer(p, result, targets)
    with output_folder(out, overwrite) as tmp:
        save_image(result.image, tmp / "reconstruction.png")
        save_grid(torch.cat([result.image, images]), tmp / "transfer.png", nrow=len(targets) + 1)
        for c, img in zip(targets, images):
            save_image(img, tmp / f"{c:04d}_{_slug(p.class_names[c])}.png")
        _write_json(tmp / "run.json", {"command": "transfer", "input": str(image), "prior": p.name, "seed": seed,
                                       "class_id": result.class_id, "targets": targets,
                                       "schedule": schedule.to_dict(), "timings": result.timings,
                                       "environment": _environment(device)})
    console.print(f"wrote {out}/ (transfer.png: reconstruction, then {len(targets)} classes)", highlight=False)


@app.command("morph", epilog="Example: dgp morph cat.png dog.png --frames 9")
def morph_command(
    first: Path = typer.Argument(..., help="First image."),
    second: Path = typer.Argument(..., help="Second image."),
    frames: int = typer.Option(9, "--frames", min=2, help="Frames from the first to the second."),
    output: Path | None = _out_option(), prior: str = PriorOpt, weights: Path | None = WeightsOpt,
    class_a: str | None = typer.Option(None, "--class-a", help="Class of the first image (default: searched)."),
    class_b: str | None = typer.Option(None, "--class-b", help="Class of the second image (default: searched)."),
    preset: str = typer.Option("morphing", "--preset"), iterations_scale: float | None = ScaleOpt,
    candidates: int | None = CandOpt, seed: int = SeedOpt, device: str = DeviceOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Morph between two images: interpolate z, class embedding and the tuned generators."""
    from dgp.imageio import save_grid, save_image
    from dgp.manipulate import morph, save_gif
    from dgp.pipeline import default_schedule

    p = _load(prior, weights, device)
    out = output or Path(f"{first.stem}-{second.stem}-morph")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite to replace it)")
    schedule = default_schedule(p, preset, iterations_scale, candidates)
    a, b = _reconstruct_for_editing(p, [first, second], schedule, [class_a, class_b], seed, "morph (both images)")
    images = morph(p, a, b, frames)
    with output_folder(out, overwrite) as tmp:
        for i, img in enumerate(images):
            save_image(img, tmp / f"frame_{i:03d}.png")
        save_grid(images, tmp / "morph.png", nrow=frames)
        save_gif(images, tmp / "morph.gif")
        _write_json(tmp / "run.json", {"command": "morph", "inputs": [str(first), str(second)], "prior": p.name,
                                       "seed": seed, "class_ids": [a.class_id, b.class_id], "frames": frames,
                                       "schedule": schedule.to_dict(), "environment": _environment(device)})
    console.print(f"wrote {out}/ (morph.gif, morph.png, {frames} frames)", highlight=False)


@app.command("sample", epilog="Examples: dgp sample --class horse -n 16 -o horses.png ; "
             "dgp sample --class 3 -n 8 -o cats/")
def sample_command(
    class_: str = typer.Option(..., "--class", help="Class name or id."),
    n: int = typer.Option(16, "-n", min=1, max=4096, help="Number of samples."),
    output: Path = typer.Option(..., "-o", "--output", help="A .png grid, or a folder for single PNGs."),
    prior: str = PriorOpt, weights: Path | None = WeightsOpt, seed: int = SeedOpt,
    truncation: float = typer.Option(1.0, "--std", min=0.01, help="Latent standard deviation."),
    device: str = DeviceOpt, overwrite: bool = OverwriteOpt,
) -> None:
    """Draw samples of one class from a prior: a first look at what a prior knows."""
    from dgp.imageio import save_grid, save_image

    p = _load(prior, weights, device)
    c = p.class_id(class_)
    images = sample_images(p, c, n, seed, truncation)
    if output.suffix.lower() == ".png":
        save_grid(images, output, overwrite=overwrite)
    else:
        with output_folder(output, overwrite) as tmp:
            for i, img in enumerate(images):
                save_image(img, tmp / f"{_slug(p.class_names[c])}_{i:04d}.png")
    console.print(f"wrote {output} ({n} samples of class {c} {p.class_names[c]!r})", highlight=False)


def sample_images(prior: Prior, class_id: int, n: int, seed: int, std: float = 1.0,
                  batch_size: int = 64) -> torch.Tensor:
    """``n`` samples ``(n, 3, R, R)`` of one class, drawn with a generator seeded by ``seed``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    G = prior.G
    device = prior.device
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            z = (torch.randn(m, G.dim_z, generator=generator) * std).to(device)
            out.append(G(z, G.shared(torch.full((m,), class_id, device=device))).cpu())
    return torch.cat(out)


def _slug(name: str) -> str:
    keep = "".join(ch if ch.isalnum() else "_" for ch in name.split(",")[0].strip().lower())
    return keep.strip("_") or "class"

