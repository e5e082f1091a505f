"""``dgp bench quality``: DGP against baselines and ablations on held-out images, with tables and figures."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dgp.cli import app
from dgp.defaults import QUICK, QUICK_ABLATION_TASKS

console = Console(stderr=True)
bench_app = typer.Typer(help="Benchmarks: restoration quality against baselines.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _names(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--{what} is empty")
    return names


def _command_line(ctx: typer.Context) -> str:
    """The command as it would be typed: ``dgp bench quality`` and every option whose value is not its default."""
    words = ["dgp", "bench", "quality"]
    for param in sorted(ctx.command.params, key=lambda p: p.name == "output"):  # the output folder last
        value = ctx.params.get(param.name)
        opts = getattr(param, "opts", [])
        if not opts or value == param.default or value is None:
            continue
        flag = max(opts, key=len)
        if getattr(param, "is_flag", False):
            words.append(flag)
        else:
            words += [flag, shlex.quote(str(value))]
    return " ".join(words)


@bench_app.command("quality", epilog="Examples: dgp bench quality --quick -o docs/results ; "
                   "dgp bench quality --n 200 -o runs/bench-full ; "
                   "dgp bench quality --tasks sr4,inpainting --methods dgp,dip,bicubic,telea -o out/")
def quality_command(
    ctx: typer.Context,
    output: Path = typer.Option(..., "-o", "--output", help="Output folder (an existing one is resumed)."),
    data: Path | None = typer.Option(None, "--data", help="Image folder with one sub-folder per class (default: "
                                     "the shared CIFAR-10 test split, unpacked once into ~/.cache/dgp or "
                                     "$DGP_CACHE)."),
    n: int | None = typer.Option(None, "--n", min=1,
                                 help=f"Images, balanced over classes (default 200; quick {QUICK['n']})."),
    quick: bool = typer.Option(False, "--quick", help=f"The quick setting: {QUICK['n']} images, DGP iterations "
                               f"x{QUICK['iterations_scale']}, {QUICK['candidates']} candidates, DIP "
                               f"{QUICK['dip_iterations']} steps, ablations on {', '.join(QUICK_ABLATION_TASKS)} only "
                               "(under 20 min on 2 CPU cores)."),
    prior: str = typer.Option("cifar10", "--prior", help="Prior name or folder."),
    weights: Path | None = typer.Option(None, "--weights", metavar="DIR", help="Folder of released BigGAN weights."),
    classifier: str = typer.Option("cifar10", "--classifier", help="Classifier name or folder; `none` leaves out "
                                   "top-1 and the defense task."),
    tasks: str | None = typer.Option(None, "--tasks", help="Comma-separated tasks (default: all): colorization, "
                                     "inpainting, sr4, denoise0.1, denoise0.2, defense, reconstruction."),
    methods: str | None = typer.Option(None, "--methods", help="Comma-separated methods (default: all that fit "
                                       "each task): dgp, dgp-sr-mse, gan-inversion, dgp-mse-only, dgp-all-blocks, "
                                       "dgp-no-search, random-g, dip, input, bicubic, telea, navier-stokes, "
                                       "nl-means."),
    iterations_scale: float | None = typer.Option(None, "--iterations-scale", min=0.0001,
                                                  help="Multiply DGP's stage iterations (default: the prior's "
                                                  f"setting; quick {QUICK['iterations_scale']})."),
    candidates: int | None = typer.Option(None, "--candidates", min=0, help="Latent-search candidates (default: "
                                          f"the prior's; quick {QUICK['candidates']})."),
    dip_iterations: int | None = typer.Option(None, "--dip-iterations", min=1, help="Deep Image Prior steps "
                                              f"(default 300; quick {QUICK['dip_iterations']})."),
    examples: int = typer.Option(4, "--examples", min=0, help="Images shown in each task's figure."),
    seed: int = typer.Option(0, "--seed", help="Base seed (image choice, noise, attacks, searches)."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard cached results made with other settings."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes computing results side by side (CPU only; "
                                "torch's threads are shared out between them, so 2 workers on 2 cores run "
                                "single-threaded, which is faster for 32-pixel priors)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images DGP, its ablations and GAN "
                                          "inversion restore at once with the batched engine (default: at most "
                                          "16, shared out evenly); 1 restores one image at a time, as earlier "
                                          "versions did. Above 1 a result depends slightly on the images that "
                                          "shared its batch."),
) -> None:
    """Benchmark DGP against Deep Image Prior, GAN inversion, its ablations and classical methods.

    Writes README.md (every table), one <task>.md and <task>.png per task, results.json (per-image figures) and
    images.txt into OUTPUT. Per-image results are cached in OUTPUT/cache, so an interrupted run continues.
    """
    from dgp.bench.datasets import cifar10_split
    from dgp.bench.quality import BenchEvent, BenchSettings, QualityBench
    from dgp.classifier import load_classifier
    from dgp.cli.restore import _device
    from dgp.data import ImageFolder
    from dgp.priors.registry import load_prior

    start = time.perf_counter()
    task_list, method_list = _names(tasks, "tasks"), _names(methods, "methods")
    values: dict[str, Any] = {"n": n, "iterations_scale": iterations_scale, "candidates": candidates,
                              "dip_iterations": dip_iterations}
    settings = (BenchSettings.quick_setting(**values, seed=seed, examples=examples) if quick else
                BenchSettings(**{k: v for k, v in values.items() if v is not None}, seed=seed, examples=examples))
    if workers > 1 and device != "cpu":
        raise typer.BadParameter("above 1 runs on the CPU only; leave it out with --device cuda",
                                 param_hint="--workers")
    dev = _device(device)
    p = load_prior(prior, weights=weights, device=dev)
    model, card = (None, None) if classifier.lower() == "none" else load_classifier(classifier, device=dev)
    if model is None and task_list is None:
        from dgp.bench.quality import TASKS
        task_list = [t for t in TASKS if t != "defense"]
    data_dir = data if data is not None else cifar10_split("test")
    folder = ImageFolder.scan(data_dir)
    command = _command_line(ctx)
    info = {"command": command, "prior": prior, "classifier": classifier, "data": str(data_dir)}

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, disable=not console.is_terminal)
    bars: dict[str, Any] = {}

    def on_event(event: BenchEvent) -> None:
        if not bars:
            bars["all"] = progress.add_task("all tasks", total=event.overall_total, info="")
            bars["current"] = progress.add_task("", total=event.total, info="")
        key = f"{event.task}/{event.method}"
        info_text = "cached" if event.cached else (f"{event.seconds:.1f} s/image" if event.done else "")
        if event.done == 0:  # a method starts: restart the bar (and its time estimate)
            progress.reset(bars["current"], total=event.total, description=key, info="")
        else:
            progress.update(bars["current"], completed=event.done, info=info_text)
        progress.update(bars["all"], completed=event.overall_done)
        if not console.is_terminal and event.done == event.total:
            console.print(f"{key}: {event.total} images done ({event.overall_done}/{event.overall_total} of the run)",
                          highlight=False)

    bench = QualityBench(p, model, folder, output, settings, tasks=task_list, methods=method_list,
                         progress=on_event, classifier_card=card, info=info, overwrite=overwrite,
                         batch_size=batch_size)
    with progress:
        result = bench.run(workers=workers)
    console.print(f"wrote {output}/README.md ({result.computed} restorations computed, {result.cached} reused, "
                  f"{time.perf_counter() - start:.0f} s)", highlight=False)
