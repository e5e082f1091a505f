"""``dgp serve``: the web UI (needs the optional extra ``dgp[web]``)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType

import typer

from dgp.cli import app
from dgp.defaults import DEFAULT_PRIOR


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@app.command("serve", epilog="Examples: dgp serve ; dgp serve --prior my_prior/ --weights ~/dgp-weights ; "
             "dgp serve --host 0.0.0.0 --port 8080  (reachable from other machines)")
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port to listen on."),
    prior: list[str] | None = typer.Option(None, "--prior", help="Prior to offer first (name or prior folder); "
                                           f"repeat to offer several (default: {DEFAULT_PRIOR})."),
    weights: Path | None = typer.Option(None, "--weights", metavar="DIR", help="Folder of released BigGAN weights "
                                        "and prior folders to offer (default: $DGP_WEIGHTS)."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", min=0.01, help="Largest upload, in MB."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="Runs at a time."),
    queue_size: int = typer.Option(8, "--queue-size", min=1, help="Runs waiting at most; later ones are refused."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
) -> None:
    """Serve the web UI: restore and edit images in a browser."""
    from dgp.web import INSTALL_HINT, gradio_available

    if not gradio_available():
        typer.echo(f"error: {INSTALL_HINT}", err=True)
        raise typer.Exit(1)
    from dgp.cli.restore import _device
    from dgp.web.app import build_app, is_loopback, launch

    _device(device)  # refuses an unknown or absent device in one line
    if not is_loopback(host):
        typer.echo(f"warning: listening on {host}: anyone who can reach this machine can use the UI and its "
                   "computing time", err=True)
    signal.signal(signal.SIGTERM, _interrupt)  # stop as on Ctrl-C: the server closes and its run files go
    demo = build_app(prior or [DEFAULT_PRIOR], weights, max_upload_mb=max_upload_mb, concurrency=concurrency,
                     queue_size=queue_size, device=device)
    launch(demo, host=host, port=port, max_upload_mb=max_upload_mb)
