"""``dgp priors``: list the known priors and check a folder of released weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from dgp.cli import app
from dgp.defaults import WEIGHTS_ENV

if TYPE_CHECKING:
    from dgp.priors.registry import PriorSpec

priors_app = typer.Typer(help="Work with priors: list the known ones, check released BigGAN weights.",
                         no_args_is_help=True)
app.add_typer(priors_app, name="priors")

WeightsOption = typer.Option(None, "--weights", metavar="DIR",
                             help=f"Folder holding the released .pth files (default: ${WEIGHTS_ENV}).")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _status(spec: PriorSpec, weights: Path | None) -> str:
    folder = spec.weights_folder(weights)
    missing = spec.missing_files(weights)
    if spec.kind == "packaged":
        return "installed" if not missing else "not installed"
    if folder is None:
        return "no weights folder"
    if not folder.is_dir():
        return "folder not found"
    return f"missing {', '.join(missing)}" if missing else "found"


@priors_app.command("list")
def list_command(weights: Path | None = WeightsOption) -> None:
    """Show the known priors, their files and whether they were found."""
    from dgp.priors.registry import list_priors, weights_folder

    folder = weights_folder(weights)
    caption = (f"released weights folder: {folder}" if folder is not None
               else f"released weights folder: not set (--weights DIR or {WEIGHTS_ENV}=DIR)")
    table = Table(title="Known priors", caption=caption, box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True)
    table.add_column("size", justify="right")
    table.add_column("classes", justify="right")
    table.add_column("files", no_wrap=True)
    table.add_column("status", min_width=16, overflow="fold")
    for spec in list_priors():
        table.add_row(spec.name, str(spec.resolution), str(spec.n_classes), "\n".join(spec.files),
                      _status(spec, weights))
    Console().print(table)


_STATUS_TEXT = {"ok": "[green]OK[/green]", "absent": "[dim]absent[/dim]", "missing": "[red]MISSING[/red]",
                "bad": "[red]PROBLEM[/red]"}


@priors_app.command("check")
def check_command(
    folder: Path = typer.Argument(..., metavar="DIR", help="Folder with the released .pth files."),
) -> None:
    """Check released BigGAN files in DIR (names, keys, shapes) on the CPU, without loading them to a GPU."""
    from dgp.priors.registry import PriorError, check_weights_folder

    try:
        results = check_weights_folder(folder)
    except PriorError as exc:
        _fail(str(exc))
    table = Table(title=f"Released weights in {folder}", box=box.SIMPLE_HEAD)
    for column in ("prior", "file", "status"):
        table.add_column(column, no_wrap=True)
    table.add_column("details", overflow="fold")
    for r in results:
        table.add_row(r.prior, r.file, _STATUS_TEXT[r.status], r.message)
    Console().print(table)
    if all(r.status == "absent" for r in results):
        _fail(f"no released weights found in {folder}; expected any of: {', '.join(r.file for r in results)}")
    problems = [r for r in results if r.problem]
    if problems:
        _fail(f"{len(problems)} file(s) with problems in {folder}: {', '.join(r.file for r in problems)}")
    typer.echo(f"{sum(r.status == 'ok' for r in results)} file(s) fit their architecture.")


__all__ = ["priors_app"]
