"""``dgp train``: train a BigGAN prior or a classifier on an image folder (resumable, with a progress bar)."""

from __future__ import annotations

import dataclasses
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from dgp.cli import app

if TYPE_CHECKING:
    import torch

train_app = typer.Typer(help="Train a prior or a classifier on an image folder.", no_args_is_help=True)
app.add_typer(train_app, name="train")

console = Console(stderr=True)

USAGE_ERROR = 2  # bad arguments: missing/empty data folder, unknown device, invalid settings
RUN_ERROR = 1    # the run folder's state: existing run without --resume, nothing to resume, mismatches


def _fail(message: str, code: int = RUN_ERROR) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _device(name: str) -> torch.device:
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        _fail(f"unknown device {name!r} (use cpu or cuda)", USAGE_ERROR)
    if device.type not in ("cpu", "cuda"):
        _fail(f"unsupported device {name!r} (use cpu or cuda)", USAGE_ERROR)
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail("CUDA is not available on this machine; use --device cpu", USAGE_ERROR)
    return device


def _check_paths(data_dir: Path, out_dir: Path) -> None:
    if not data_dir.is_dir():
        _fail(f"data folder not found: {data_dir}", USAGE_ERROR)
    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"output {out_dir} exists and is not a folder", USAGE_ERROR)


def _ignored_on_resume(given: dict[str, Any]) -> None:
    names = [name for name, value in given.items() if value is not None]
    if names:
        console.print(f"note: {', '.join(names)} ignored when resuming (the checkpoint's settings are used)",
                      highlight=False)


def _run_guarded(train: Callable[[], Any]) -> Any:
    """Run ``train`` turning expected failures into one-line errors."""
    from dgp.imageio import ImageError

    try:
        return train()
    except (FileExistsError, FileNotFoundError) as exc:
        _fail(str(exc))
    except ImageError as exc:
        _fail(str(exc), USAGE_ERROR)
    except ValueError as exc:
        message = str(exc)
        code = USAGE_ERROR if message.startswith(("data folder not found", "no images found")) else RUN_ERROR
        _fail(message.splitlines()[0] if message else type(exc).__name__, code)
    except (pickle.UnpicklingError, EOFError, KeyError) as exc:
        _fail(f"cannot read the checkpoint (truncated, corrupt or from another version): {exc}")
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _fail(f"training failed: {first}")
    except KeyboardInterrupt:
        typer.echo("interrupted; continue from the last checkpoint with --resume", err=True)
        raise typer.Exit(130) from None


class _Bar:
    """A rich progress bar fed by training events; the task is created at the first event so that a resumed
    run's ETA is estimated from this session's speed only."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console, transient=False)
        self.task: int | None = None

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, total: int, info: str) -> None:
        if self.task is None:
            self.task = self.progress.add_task(self.label, total=total, completed=step, info=info)
        else:
            self.progress.update(self.task, completed=step, total=total, info=info)


def _minutes(max_minutes: float | None) -> float | None:
    if max_minutes is not None and max_minutes <= 0:
        _fail("--max-minutes must be positive", USAGE_ERROR)
    return None if max_minutes is None else max_minutes * 60.0


@train_app.command("prior", epilog="Example: dgp train prior cifar10/train -o runs/prior --steps 6000")
def prior_command(
    data_dir: Path = typer.Argument(..., metavar="DATA_DIR", help="Image folder: one sub-folder per class "
                                    "(a flat folder gives an unconditional prior)."),
    out_dir: Path = typer.Option(..., "-o", "--out", metavar="OUT_DIR", help="Run folder (checkpoint, log, "
                                 "sample grids; the prior is exported to OUT_DIR/prior)."),
    steps: int | None = typer.Option(None, "--steps", min=1, help="Generator steps in all (default 6000)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per step (default 64)."),
    g_ch: int | None = typer.Option(None, "--g-ch", min=1, help="Generator width (default 16)."),
    d_ch: int | None = typer.Option(None, "--d-ch", min=1, help="Discriminator width (default 16)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of every random draw (default 0)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT_DIR."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop (resumably) after this long."),
    recalibrate: bool = typer.Option(True, "--recalibrate/--no-recalibrate", help="Re-estimate the exported "
                                     "generator's batch-norm statistics from its own samples."),
) -> None:
    """Train a class-conditional BigGAN prior (hinge loss, EMA generator), then export it to OUT_DIR/prior."""
    from dgp.training.prior import PriorTrainConfig, TrainEvent, export_prior, train_prior

    _check_paths(data_dir, out_dir)
    dev = _device(device)
    seconds = _minutes(max_minutes)
    settings = {"batch_size": batch_size, "G_ch": g_ch, "D_ch": d_ch, "seed": seed}
    try:
        if resume:
            _ignored_on_resume({"--batch-size": batch_size, "--g-ch": g_ch, "--d-ch": d_ch, "--seed": seed})
            config = None if steps is None else dataclasses.replace(PriorTrainConfig(), steps=steps)
        else:
            given = {k: v for k, v in settings.items() if v is not None}
            config = PriorTrainConfig(**given, **({"steps": steps} if steps is not None else {}))
    except ValueError as exc:
        _fail(str(exc), USAGE_ERROR)

    with _Bar("prior") as bar:
        def callback(event: TrainEvent) -> None:
            losses = "  ".join(f"{k} {v:.3f}" for k, v in event.losses.items())
            bar.update(event.step, event.total, losses)

        run = _run_guarded(lambda: train_prior(data_dir, out_dir, config, resume=resume, device=dev,
                                               callback=callback, max_seconds=seconds))
    folder = _run_guarded(lambda: export_prior(run, out_dir / "prior", data=str(data_dir),
                                                 recalibrate=recalibrate))
    done = run.step >= run.config.steps
    state = "finished" if done else f"stopped at step {run.step} of {run.config.steps} (continue with --resume)"
    console.print(f"training {state}; {run.elapsed / 60:.1f} min in all", highlight=False)
    typer.echo(f"prior written to {folder}")


@train_app.command("classifier", epilog="Example: dgp train classifier cifar10/train -o runs/classifier "
                                        "--test cifar10/test")
def classifier_command(
    data_dir: Path = typer.Argument(..., metavar="DATA_DIR", help="Image folder, one sub-folder per class."),
    out_dir: Path = typer.Option(..., "-o", "--out", metavar="OUT_DIR", help="Run folder (checkpoint, log; the "
                                 "classifier is exported to OUT_DIR/classifier)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Passes over the data (default 10)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per step (default 512)."),
    widths: str | None = typer.Option(None, "--widths", metavar="A,B,C",
                                      help="Channels of the three conv groups (default 32,128,128)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of every random draw (default 0)."),
    test_dir: Path | None = typer.Option(None, "--test", metavar="TEST_DIR", help="Labelled folder with the "
                                         "same classes: accuracy after each epoch and in the card."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT_DIR."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop (resumably) after this long."),
) -> None:
    """Train the small CIFAR-style classifier, then export it to OUT_DIR/classifier."""
    from dgp.training.classifier import ClassifierEvent, ClassifierTrainConfig, export_classifier, \
        train_classifier

    _check_paths(data_dir, out_dir)
    if test_dir is not None and not test_dir.is_dir():
        _fail(f"test folder not found: {test_dir}", USAGE_ERROR)
    dev = _device(device)
    seconds = _minutes(max_minutes)
    width_values = None
    if widths is not None:
        try:
            width_values = tuple(int(w) for w in widths.split(","))
        except ValueError:
            _fail(f"--widths must be three integers like 32,128,128, got {widths!r}", USAGE_ERROR)
    try:
        if resume:
            _ignored_on_resume({"--batch-size": batch_size, "--widths": widths, "--seed": seed})
            config = None if epochs is None else dataclasses.replace(ClassifierTrainConfig(), epochs=epochs)
        else:
            given = {"epochs": epochs, "batch_size": batch_size, "widths": width_values, "seed": seed}
            config = ClassifierTrainConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        _fail(str(exc), USAGE_ERROR)

    last_accuracy: list[float] = []
    start = time.perf_counter()
    with _Bar("classifier") as bar:
        def callback(event: ClassifierEvent) -> None:
            if event.test_accuracy is not None:
                last_accuracy.append(event.test_accuracy)
            acc = f"  test {100 * last_accuracy[-1]:.1f}%" if last_accuracy else ""
            bar.update(event.step, event.total, f"epoch {event.epoch:.1f}  loss {event.losses['loss']:.3f}{acc}")

        run = _run_guarded(lambda: train_classifier(data_dir, out_dir, config, resume=resume, device=dev,
                                                    callback=callback, test_dir=test_dir, max_seconds=seconds))
    folder = _run_guarded(lambda: export_classifier(run, out_dir / "classifier", data=str(data_dir),
                                                    test_dir=test_dir))
    done = run.step >= run.total_steps
    state = "finished" if done else (f"stopped at step {run.step} of {run.total_steps} "
                                     "(continue with --resume)")
    console.print(f"training {state}; {run.elapsed / 60:.1f} min wall, {run.cpu_seconds / 60:.1f} min CPU in all "
                  f"({time.perf_counter() - start:.0f} s this session)", highlight=False)
    if test_dir is not None:
        from dgp.classifier import load_classifier

        _, card = load_classifier(folder)
        acc = card["accuracy"]
        typer.echo(f"test top-1: {100 * acc['top1']:.2f}% ({100 * acc['top1_flip_average']:.2f}% with flip "
                   f"averaging) on {acc['n_images']} images")
    typer.echo(f"classifier written to {folder}")


__all__ = ["train_app"]
