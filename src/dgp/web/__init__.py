"""The web UI (``dgp serve``): a Gradio app over the restoration and editing engine.

:mod:`dgp.web.service` holds what the UI does (which priors can be chosen, reading and checking uploads,
running a restoration or an edit into a run folder) and needs no Gradio; :mod:`dgp.web.app` builds the page
and turns user errors into messages in it. Gradio is the optional extra ``dgp[web]``.

Importing this package turns Gradio's analytics and version check off for the process (before Gradio is
imported), so that the server makes no outgoing calls.
"""

from __future__ import annotations

import os
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")

INSTALL_HINT = "the web UI needs gradio: install it with  pip install 'dgp[web]'"


def gradio_available() -> bool:
    """Whether Gradio can be imported."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        return False
    return True


def __getattr__(name: str) -> Any:  # build_app / launch without importing gradio for the service layer
    if name in ("build_app", "launch", "Handlers"):
        from dgp.web import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["INSTALL_HINT", "Handlers", "build_app", "gradio_available", "launch"]
