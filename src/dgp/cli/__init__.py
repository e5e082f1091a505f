"""The ``dgp`` command. Each sub-module registers its commands on :data:`app`."""

from __future__ import annotations

import sys

import typer

from dgp.defaults import BATCH_TASKS

app = typer.Typer(
    name="dgp",
    help="Deep Generative Prior: restore and edit images with a pretrained BigGAN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        from dgp import __version__

        typer.echo(f"dgp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """Deep Generative Prior: restore and edit images with a pretrained BigGAN."""


def _is_input_error(exc: Exception) -> bool:
    """Whether ``exc`` is an error in the user's input or files (one line, exit status 1) rather than a bug."""
    if isinstance(exc, (ValueError, OSError)):
        return True
    # only a loaded engine raises its errors (the module is not imported to build the command line)
    reconstruct = sys.modules.get("dgp.reconstruct")
    return reconstruct is not None and isinstance(exc, reconstruct.ReconstructionError)


def main() -> None:
    """Console-script entry point: errors end in one line on stderr.

    Exit status 2 for a malformed command line (unknown option, missing argument, bad value), 1 for input
    that cannot be used, 130 when interrupted. Set ``DGP_DEBUG=1`` to see the full traceback instead.
    """
    import os

    from dgp.allocator import keep_freed_memory
    from dgp.cli import commands  # noqa: F401  (registers every command, without importing torch)

    keep_freed_memory()  # the application's choice for the whole process (see dgp.allocator)

    # typer vendors click in recent releases: find its UsageError through a public subclass
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    try:
        code = app(prog_name="dgp", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except usage_error as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            sys.exit(0)
        command = ctx.command_path if ctx is not None else "dgp"
        message = " ".join(exc.format_message().split())
        hint = f"see `{command} --help`"
        # the tasks of `dgp batch` are the commands that restore one image: several given meant `dgp batch`
        if message.startswith("Got unexpected extra argument") and command.split()[-1] in BATCH_TASKS:
            hint = "it restores one image; `dgp batch` restores several at once, see `dgp batch --help`"
        print(f"error: {message} ({hint})", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if not _is_input_error(exc) or os.environ.get("DGP_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
