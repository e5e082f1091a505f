"""Imports every command module so that each registers its commands on the app."""

from dgp.cli import priors  # noqa: E402,F401  (dgp priors ...)
from dgp.cli import restore  # noqa: E402,F401  (restoration and editing commands)
from dgp.cli import evaluate  # noqa: E402,F401  (dgp priors evaluate)
from dgp.cli import train  # noqa: E402,F401  (dgp train prior|classifier)
from dgp.cli import batch  # noqa: E402,F401  (dgp batch)
from dgp.cli import bench  # noqa: E402,F401  (dgp bench quality)
from dgp.cli import serve  # noqa: E402,F401  (dgp serve: the web UI)
