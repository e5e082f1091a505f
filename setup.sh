#!/usr/bin/env bash
# One-command setup: a virtual environment in .venv with torch and dgp (editable, with test tools).
#
# torch: an existing torch in .venv is kept; otherwise DGP_TORCH_SPEC (e.g. "torch==2.4.1", or
# "torch --index-url https://download.pytorch.org/whl/cu124") is installed if set;
# otherwise torch==2.13.0 when its CPU wheel is on this machine's disk (/opt/wheels, the project's build machine),
# and the usual `pip install torch` everywhere else.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
    python=${PYTHON:-}
    if [ -z "$python" ]; then
        if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
    fi
    echo "setup: creating .venv with $("$python" --version 2>&1)"
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip)
"${pip[@]}" install --quiet --upgrade pip

if .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    echo "setup: keeping torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
elif [ -n "${DGP_TORCH_SPEC:-}" ]; then
    echo "setup: installing $DGP_TORCH_SPEC"
    read -r -a spec <<< "$DGP_TORCH_SPEC"  # may carry pip options, e.g. "torch --index-url URL"
    "${pip[@]}" install --quiet "${spec[@]}"
elif compgen -G "/opt/wheels/torch-2.13.0*.whl" >/dev/null; then
    echo "setup: installing torch==2.13.0 (CPU build from /opt/wheels)"
    "${pip[@]}" install --quiet --find-links /opt/wheels torch==2.13.0
    if ! .venv/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
        echo "setup: error: a CUDA build of torch was installed instead of the CPU wheel in /opt/wheels" >&2
        exit 1
    fi
else
    echo "setup: installing torch"
    "${pip[@]}" install --quiet torch
fi

"${pip[@]}" install --quiet -e ".[dev]"

# The web UI's browser test drives Debian's chromium with Playwright (never a browser that Playwright
# downloads): install the Debian package where it is missing, when we are root and apt-get is there.
# Otherwise nothing happens here, and the browser test skips, saying why.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium (for the web UI's browser test)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; then
        echo "setup: warning: could not install chromium; the browser test will skip" >&2
    fi
fi
echo "setup: done; torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'), run the tests with: .venv/bin/python -m pytest"
