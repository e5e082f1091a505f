"""``dgp --version``, ``dgp priors list`` and ``dgp priors check``, run as a user runs them (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dgp


def run_dgp(*args: str, weights: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DGP_WEIGHTS"}
    env.update(OMP_NUM_THREADS="1", COLUMNS="120")
    if weights is not None:
        env["DGP_WEIGHTS"] = str(weights)
    return subprocess.run([sys.executable, "-m", "dgp", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_version() -> None:
    result = run_dgp("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"dgp {dgp.__version__}"


def test_priors_list(tmp_path: Path) -> None:
    (tmp_path / "G_ema_128.pth").write_bytes(b"")
    (tmp_path / "D_128.pth").write_bytes(b"")
    result = run_dgp("priors", "list", weights=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("cifar10", "biggan-imagenet-128", "biggan-imagenet-256", "biggan-imagenet-ch64-256",
                 "G_ema_ch64_256.pth"):
        assert name in result.stdout
    assert str(tmp_path) in result.stdout
    row_128 = next(line for line in result.stdout.splitlines() if "biggan-imagenet-128" in line)
    assert "found" in row_128
    row_256 = next(line for line in result.stdout.splitlines() if "biggan-imagenet-256" in line)
    assert "missing" in row_256


def test_priors_check_missing_folder(tmp_path: Path) -> None:
    assert_one_line_error(run_dgp("priors", "check", str(tmp_path / "nope")), "weights folder not found")


def test_priors_check_empty_folder(tmp_path: Path) -> None:
    assert_one_line_error(run_dgp("priors", "check", str(tmp_path)), "no released weights found",
                          "G_ema_128.pth")


def test_priors_check_good_and_bad_files(tmp_path: Path, fake_released) -> None:  # noqa: ANN001
    fake_released(tmp_path, "G_ema_128.pth", "128", "G_ema")
    fake_released(tmp_path, "D_128.pth", "128", "D")
    good = run_dgp("priors", "check", str(tmp_path))
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout and "2 file(s) fit their architecture" in good.stdout

    (tmp_path / "G_ema_256.pth").write_bytes((tmp_path / "G_ema_128.pth").read_bytes()[:100])  # truncated
    bad = run_dgp("priors", "check", str(tmp_path))
    assert_one_line_error(bad, "2 file(s) with problems", "G_ema_256.pth", "D_256.pth")
    assert "truncated or corrupt" in bad.stdout and "MISSING" in bad.stdout
