"""``dgp batch``: restore a folder (glob, list file) of images, resumably, on local workers or a Ray cluster."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperCommand

import dgp
from dgp.cli import app
from dgp.cli.restore import (
    CandOpt,
    DegradeOpt,
    DeviceOpt,
    PriorOpt,
    ScaleOpt,
    SeedOpt,
    WeightsOpt,
    _device,
    _load,
)
from dgp.defaults import BATCH_TASKS

if TYPE_CHECKING:
    from dgp.batch.runner import BatchEvent, BatchSummary

console = Console(stderr=True)
out_console = Console()

METRIC_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "observation_psnr": "observation PSNR (dB)",
                 "observation_ssim": "observation SSIM"}


RAY_LOCAL = "local"


def optional_value(args: list[str], option: str, value: str) -> list[str]:
    """Give ``option`` the value ``value`` where it stands alone (last, or followed by another option), so that
    ``--ray`` works both as a flag and with an address (typer has no options with an optional value)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg == option and (i + 1 == len(out) or (out[i + 1].startswith("-") and len(out[i + 1]) > 1)):
            out[i] = f"{option}={value}"
    return out


class _BatchCommand(TyperCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, optional_value(args, "--ray", RAY_LOCAL))


class _Reporter:
    """Progress bar with ETA on a terminal; one line per finished image otherwise."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console, disable=not console.is_terminal)
        self.task: Any = None
        self.ok = self.failed = 0

    def __enter__(self) -> _Reporter:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: BatchEvent) -> None:
        if event.kind == "start":
            if event.total:
                workers = f" on each of {event.workers} workers" if event.workers > 1 else ""
                at_once = (f"in batches of up to {event.batch_size}{workers}" if event.batch_size > 1 else
                           f"one at a time{workers}")
                console.print(f"restoring {event.total} image(s) {at_once}", highlight=False)
            self.task = self.progress.add_task("batch", total=event.total, info="")
            return
        if event.kind == "retry":
            console.print(f"retrying {event.name}: {event.message}", highlight=False, soft_wrap=True)
            return
        row = event.row
        assert row is not None
        if row.status == "ok":
            self.ok += 1
        else:
            self.failed += 1
            console.print(f"failed {row.name}: {row.error}", highlight=False, soft_wrap=True)
        info = f"{self.ok} ok" + (f", [red]{self.failed} failed[/]" if self.failed else "")
        self.progress.update(self.task, completed=event.done, info=info)
        if not console.is_terminal and row.status == "ok":
            restore_s = row.timings.get("restore", 0.0)
            console.print(f"[{event.done}/{event.total}] {row.name} ok ({restore_s:.1f} s)", highlight=False,
                          soft_wrap=True)


def _summary_table(summary: BatchSummary, output: Path) -> Table:
    table = Table(title=f"dgp batch -> {output}", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("restored", str(summary.ok))
    table.add_row("failed", str(summary.failed))
    table.add_row("skipped (done before)", str(summary.skipped))
    if summary.retried:
        table.add_row("retried (lost workers)", str(summary.retried))
    table.add_row("time", f"{summary.seconds:.1f} s")
    table.add_row("images per minute", f"{summary.images_per_minute:.2f}")
    for key, label in METRIC_LABELS.items():
        if key in summary.metrics:
            digits = 3 if "ssim" in key else 2
            table.add_row(f"mean {label}", f"{summary.metrics[key]:.{digits}f}")
    return table


@app.command("batch", cls=_BatchCommand,
             epilog="Examples: dgp batch photos/ --task colorize -o colorized/ --workers 2 ; "
             "dgp batch 'val/*.png' --task super-resolve --degrade -o sr/ --ray ; "
             "dgp batch list.txt --task restore -d down2+gray -o out/ --ray HEAD:6379")
def batch_command(
    input_spec: str = typer.Argument(..., metavar="INPUT", help="A folder of images, a glob pattern (quote it; "
                                     "'**' recurses) or a list file (.txt: one path a line)."),
    task: str = typer.Option(..., "--task", "-t", help=f"One of: {', '.join(BATCH_TASKS)} (restore needs "
                             "--degradation)."),
    output: Path = typer.Option(..., "-o", "--output", help="Output folder: restored/, manifest.jsonl, batch.json. "
                                "Run the same command again to resume."),
    degradation: str | None = typer.Option(None, "--degradation", "-d", help="Degradation chain (default: the "
                                           "task's), e.g. down2+gray+hole, boxes3, noise0.1."),
    degrade: bool = DegradeOpt,
    references: Path | None = typer.Option(None, "--references", help="Folder of clean images with the same "
                                           "names, to score against."),
    mask: Path | None = typer.Option(None, "--mask", help="Mask image for the `mask` token (white = missing)."),
    workers: int | None = typer.Option(None, "--workers", "-w", min=0, help="Local: worker processes (default 1: "
                                       "in this process). Ray: actors (default: one per CPU of the cluster)."),
    ray: str | None = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                   help="Run on Ray: alone (or `local`), a new local Ray instance; with an ADDRESS "
                                   "(HOST:6379, auto, ray://HOST:10001), that cluster. Put it after INPUT."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Torch threads of each worker (default: "
                                       "the cores shared out among local workers; 1 per Ray actor). Results are "
                                       "the same for the same threads per worker whatever --workers; another "
                                       "thread count changes them slightly (float rounding)."),
    retries: int = typer.Option(2, "--retries", min=0, help="Extra tries for an image whose worker was lost."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images each worker restores "
                                          "together with the batched engine (default: the images shared out "
                                          "among the workers, at most 16 a worker, fewer for large priors). "
                                          "Above 1, each result depends slightly on the images that shared its "
                                          "batch; 1 restores one image at a time (slower), so that results do "
                                          "not depend on the order or the workers."),
    prior: str = PriorOpt, weights: Path | None = WeightsOpt,
    preset: str | None = typer.Option(None, "--preset", help="Schedule preset (default: the task's)."),
    iterations_scale: float | None = ScaleOpt, candidates: int | None = CandOpt, seed: int = SeedOpt,
    device: str = DeviceOpt,
) -> None:
    """Restore every image of a folder, glob or list into OUT, resumably; on local workers or a Ray cluster.

    Each image's random degradation draws are seeded from --seed and its name, every latent search from
    --seed. Images are restored in batches (about 3x faster than one at a time on a CPU); with --batch-size 1,
    results do not depend on the order or the workers.

    A rerun of the same command skips restored images and retries failed ones.
    """
    import torch

    from dgp.batch.inputs import list_inputs
    from dgp.batch.runner import KILL_ONCE_ENV, OUTPUTS_FOLDER, BatchSettings, make_backend, run_batch

    use_ray = ray is not None
    if use_ray:
        from dgp.batch.ray_backend import import_ray

        import_ray()  # a one-line error before any work when Ray is missing
    elif workers == 0:
        raise ValueError("--workers must be >= 1 without --ray")
    settings = BatchSettings(task=task, prior=prior, degradation=degradation, preset=preset, degrade=degrade,
                             mask=str(mask) if mask else None, seed=seed, iterations_scale=iterations_scale,
                             candidates=candidates)
    if use_ray:  # the workers' device: the driver may well have no GPU
        try:
            torch.device(device)
        except RuntimeError:
            raise ValueError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    else:
        _device(device)
    inputs = list_inputs(input_spec)
    p = _load(prior, weights, "cpu")
    backend = make_backend(workers if workers is not None else (0 if use_ray else 1),
                           None if ray in (None, RAY_LOCAL) else ray,
                           use_ray=use_ray, device=device, threads=threads,
                           kill_once=os.environ.get(KILL_ONCE_ENV))
    environment = {"dgp": dgp.__version__, "torch": torch.__version__, "python": platform.python_version(),
                   "device": device}
    reporter = _Reporter()
    try:
        with reporter:
            summary = run_batch(inputs, output, settings, p, backend=backend, references=references,
                                retries=retries, batch_size=batch_size, environment=environment,
                                on_event=reporter)
    except KeyboardInterrupt:
        console.print(f"interrupted after {reporter.ok + reporter.failed} image(s); run the same command again "
                      "to finish the rest", highlight=False)
        raise typer.Exit(130) from None
    out_console.print(_summary_table(summary, output))
    out_console.print(f"outputs in {output / OUTPUTS_FOLDER}/, one row per image in {output / 'manifest.jsonl'}",
                      highlight=False)
    if summary.failed:
        console.print(f"error: {summary.failed} of {summary.inputs} image(s) failed "
                      f"({', '.join(summary.failed_names[:3])}{', ...' if summary.failed > 3 else ''}); "
                      "see the manifest, and run the same command again to retry them", highlight=False,
                      soft_wrap=True)
        raise typer.Exit(1)
