"""The web UI (``dgp serve``): its handlers, fast and without a browser, then one session in a real browser.

The handler tests call :class:`dgp.web.app.Handlers` as the page does, on a tiny prior folder, and check
what a user sees: results and downloads, or one clear message (``gr.Error``) that names no server path.

The browser test starts ``python -m dgp serve`` on a free local port and drives it with Playwright in
Debian's chromium (``/usr/bin/chromium``; never a downloaded browser): it uploads an image, runs a short
colorization, tries an inpainting with a bad mask file (a message in the page), paints a mask on the canvas
with the mouse and runs the inpainting, checks the results, the progress and the run.json download, that the
page fetched nothing from outside this machine, and saves a screenshot (to ``docs/web-ui.png`` when
``DGP_UPDATE_SCREENSHOT=1``). It skips, saying why, when playwright or chromium is absent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install 'dgp[web]')")

from dgp.priors.biggan import BigGANConfig, Discriminator, Generator  # noqa: E402
from dgp.priors.checkpoint import save_prior  # noqa: E402
from dgp.web.app import Handlers, build_app, is_loopback, launch  # noqa: E402
from dgp.web.service import (  # noqa: E402
    PriorCatalog,
    ReconstructionCache,
    RunFolders,
    UploadLimits,
    UserError,
    open_upload,
    painted_mask,
    scrub_paths,
)

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("DGP_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CLASSES = ["red", "green", "blue"]


# ------------------------------------------------------------------------------------------ fixtures


def write_tiny_prior(folder: Path) -> Path:
    """A 32x32, 3-class random prior folder whose card asks for 2 steps per stage and 4 search candidates."""
    config = BigGANConfig(resolution=32, G_ch=4, D_ch=4, dim_z=32, shared_dim=16, n_classes=3,
                          G_attn="16", D_attn="16")
    torch.manual_seed(0)
    save_prior(folder, Generator(config).eval(), Discriminator(config).eval(),
               card={"class_names": CLASSES, "presets": {"iterations_scale": 0.01, "n_candidates": 4}})
    return folder


def write_scene(path: Path, size: tuple[int, int] = (192, 160)) -> Path:
    """A small landscape (sky, sun, a mountain, grass), not square, as a PNG."""
    w, h = size
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    pixels = np.broadcast_to((1 - t) * np.array([90, 150, 230]) + t * np.array([200, 225, 250]), (h, w, 3)).copy()
    horizon = int(h * 0.62)
    pixels[horizon:] = np.array([70, 140, 60]) - np.linspace(0, 1, h - horizon)[:, None, None] * np.array([30, 40, 20])
    im = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(im)
    draw.ellipse((int(w * 0.62), int(h * 0.12), int(w * 0.83), int(h * 0.37)), fill=(250, 210, 60))
    draw.polygon([(int(w * 0.1), int(h * 0.62)), (int(w * 0.36), int(h * 0.28)), (int(w * 0.62), int(h * 0.62))],
                 fill=(120, 110, 120))
    im.save(path)
    return path


@pytest.fixture(scope="module")
def web_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web")


@pytest.fixture(scope="module")
def prior_dir(web_dir: Path) -> Path:
    return write_tiny_prior(web_dir / "tiny")


@pytest.fixture(scope="module")
def handlers(prior_dir: Path, web_dir: Path) -> Handlers:
    return Handlers(PriorCatalog([str(prior_dir)]), UploadLimits.from_mb(0.5), RunFolders(web_dir / "runs"),
                    ReconstructionCache())


@pytest.fixture(scope="module")
def scene(web_dir: Path) -> Path:
    return write_scene(web_dir / "scene.png")


@pytest.fixture(scope="module")
def not_an_image(web_dir: Path) -> Path:
    path = web_dir / "notes.png"
    path.write_text("these are notes, not pixels\n")
    return path


def page_error(excinfo: pytest.ExceptionInfo[Any]) -> str:
    """The message a ``gr.Error`` shows in the page, checked to name no server path."""
    message = excinfo.value.message
    assert "/" not in message and "\\" not in message, message
    return message


def restore_args(image: Image.Image | None, task: str = "colorize", **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(prior_label="tiny", editor={"background": image, "layers": [], "composite": image},
                                task=task, factor=4, sigma=0.1, chain="", mask_file=None, reference_file=None,
                                class_spec="automatic", iterations_scale=0.01, seed=0, degrade=False)
    args.update(overrides)
    return args


def stroke_layer(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """A transparent RGBA layer with one painted rectangle, as the editor sends it."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle(box, fill=(255, 45, 111, 255))
    return layer


def json_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in json_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in json_strings(v)]
    return [value] if isinstance(value, str) else []


# ------------------------------------------------------------------------------------------ service


def test_scrub_paths_keeps_only_last_component() -> None:
    text = "prior x: G_ema_128.pth not found in /srv/weights/released; see ~/notes/readme.md (ratio 3/4)"
    assert scrub_paths(text) == "prior x: G_ema_128.pth not found in released; see readme.md (ratio 3/4)"
    assert scrub_paths("down2+gray+mask") == "down2+gray+mask"


def test_open_upload_refuses_bad_files_without_paths(tmp_path: Path, not_an_image: Path) -> None:
    limits = UploadLimits(max_bytes=2000, max_pixels=10_000)
    cases = {
        None: "no image uploaded yet",
        str(not_an_image): "not an image",
        str(tmp_path / "gone.png"): "could not be found",
    }
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(big)
    cases[str(big)] = "the limit is 2 KB"
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1000, 20)).save(wide)
    cases[str(wide)] = "1000x20 pixels"
    for source, fragment in cases.items():
        with pytest.raises(UserError) as excinfo:
            open_upload(source, "image", limits)
        assert fragment in str(excinfo.value)
        assert str(tmp_path) not in str(excinfo.value)
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))
    assert open_upload(rgba, "image", limits).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white


def test_painted_mask_from_layers() -> None:
    assert painted_mask([], (40, 30)) is None
    assert painted_mask([Image.new("RGBA", (40, 30))], (40, 30)) is None  # nothing painted
    mask = painted_mask([stroke_layer((40, 30), (10, 5, 19, 14))], (40, 30))
    assert mask is not None and mask.size == (40, 30)
    assert (np.asarray(mask) > 0).sum() == 100
    with pytest.raises(UserError, match="painted mask is 30x30 pixels but the image is 40x30"):
        painted_mask([stroke_layer((30, 30), (1, 1, 5, 5))], (40, 30))


def test_catalog_offers_folders_by_name_only(tmp_path: Path, prior_dir: Path) -> None:
    weights = tmp_path / "weights"
    write_tiny_prior(weights / "my-prior")
    catalog = PriorCatalog([str(prior_dir)], weights_dir=weights)
    assert catalog.labels[0] == "tiny" and "my-prior" in catalog.labels
    assert not any("/" in label for label in catalog.labels)
    available, line = catalog.describe("my-prior")
    assert available and "3 classes (red, green, blue)" in line
    with pytest.raises(UserError, match="unknown prior"):
        catalog.load("../../etc")


def test_unavailable_prior_is_said_in_the_page(tmp_path: Path) -> None:
    demo = build_app(["biggan-imagenet-128"], weights_dir=tmp_path / "no-weights", work_dir=tmp_path / "runs")
    handlers: Handlers = demo.dgp_handlers
    status = handlers.status("biggan-imagenet-128")
    assert status.startswith("⚠️") and "not available" in status and "--weights DIR" in status
    assert str(tmp_path) not in status and "/" not in status.replace("--prior FOLDER", "")
    assert handlers.class_choices("biggan-imagenet-128") == ["automatic"]
    with pytest.raises(gr.Error) as excinfo:
        handlers.restore(**restore_args(Image.new("RGB", (32, 32)), prior_label="biggan-imagenet-128"))
    assert "not available" in page_error(excinfo)
    # The shipped default prior: available, or said to be missing without naming the package folder.
    available, line = PriorCatalog().describe("cifar10")
    assert available or ("not available" in line and "site-packages" not in line and "/" not in line.split("--")[0])


def test_build_app_is_safe_by_default(tmp_path: Path, prior_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = build_app([str(prior_dir)], max_upload_mb=3, concurrency=2, queue_size=5, work_dir=tmp_path)
    assert demo.analytics_enabled is False
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert demo._queue.max_size == 5 and demo._queue.default_concurrency_limit == 2
    assert demo.api_open is False
    seen: dict[str, Any] = {}
    monkeypatch.setattr(demo, "launch", lambda **kwargs: seen.update(kwargs))
    launch(demo, port=7999, block=False)
    assert seen["server_name"] == "127.0.0.1" and seen["server_port"] == 7999
    assert seen["share"] is False and seen["ssr_mode"] is False and seen["mcp_server"] is False
    assert seen["max_file_size"] == 3 * 1024 * 1024 and seen["show_error"] is False
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(ValueError, match="concurrency"):
        build_app([str(prior_dir)], concurrency=0)


def test_served_page_makes_no_outgoing_connections(tmp_path: Path, prior_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve the page in this process and fetch it: every connection the process opens stays on this machine."""
    opened: list[Any] = []
    connect = socket.socket.connect

    def watched(self: socket.socket, address: Any) -> Any:
        opened.append(address)
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", watched)
    demo = build_app([str(prior_dir)], work_dir=tmp_path / "runs")
    port = free_port()
    launch(demo, port=port, block=False, quiet=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
            assert response.status == 200 and b"dgp" in response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            config = response.read().decode()
        assert str(prior_dir) not in config and str(tmp_path) not in config  # no server paths in the page
    finally:
        demo.close()
    remote = [a for a in opened if isinstance(a, tuple) and not is_loopback(str(a[0]))]
    assert opened and not remote, remote


# ------------------------------------------------------------------------------------------ handlers


def test_restore_bad_inputs_give_clear_messages(handlers: Handlers, scene: Path, not_an_image: Path,
                                                tmp_path: Path) -> None:
    image = Image.open(scene).convert("RGBA")
    square_mask = tmp_path / "square-mask.png"
    Image.new("L", (50, 50), 255).save(square_mask)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(big)
    cases = [
        (restore_args(None), "Upload an image first"),
        (restore_args(image, "inpaint"), "paint the missing region"),
        (restore_args(image, "inpaint", mask_file=str(not_an_image)), "mask is not an image"),
        (restore_args(image, "inpaint", mask_file=str(square_mask)),
         "mask is 50x50 pixels but the image is 192x160"),
        (restore_args(image, "inpaint", editor={"background": image, "layers": [stroke_layer((60, 60), (1, 1, 9, 9))]}),
         "painted mask is 60x60 pixels but the image is 192x160"),
        (restore_args(image, reference_file=str(big)), "limit is 0.5 MB"),
        (restore_args(image, class_spec="purple"), "unknown class 'purple'"),
        (restore_args(image, "chain", chain="gray+blur"), "unknown degradation 'blur'"),
        (restore_args(image, "chain", chain=""), "type a degradation chain"),
        (restore_args(image, "super-resolve", factor=3), "factor must be one of"),
        (restore_args(image, prior_label="nope"), "unknown prior 'nope'"),
    ]
    for args, fragment in cases:
        with pytest.raises(gr.Error) as excinfo:
            handlers.restore(**args)
        message = page_error(excinfo)
        assert fragment.lower() in message.lower(), (fragment, message)
        assert str(tmp_path) not in message


def test_restore_colorize_with_reference(handlers: Handlers, scene: Path) -> None:
    image = Image.open(scene).convert("RGBA")
    with pytest.warns(UserWarning, match="centre-cropped to a square"):  # a note in the page
        input_view, observation, result, summary, files = handlers.restore(
            **restore_args(image, "colorize", reference_file=str(scene), degrade=True))
    assert input_view.size == observation.size == result.size == (256, 256)  # enlarged for the page
    assert summary.startswith("Done: colorize (gray)") and "| result |" in summary
    assert [Path(f).name for f in files] == ["result.png", "run.json"]
    assert Image.open(files[0]).size == (32, 32)
    record = json.loads(Path(files[1]).read_text())
    assert record["command"] == "colorize" and record["prior"] == "tiny" and record["interface"] == "web"
    assert set(record["metrics"]) == {"psnr", "ssim", "observation_psnr", "observation_ssim"}
    assert record["reference"] == "uploaded" and record["class_name"] in CLASSES
    assert not [s for s in json_strings(record) if "/" in s and s.startswith(("/", "~"))]


def test_restore_inpaint_painted_and_other_tasks(handlers: Handlers, scene: Path) -> None:
    image = Image.open(scene).convert("RGBA")
    layer = stroke_layer(image.size, (70, 50, 129, 109))
    editor = {"background": image, "layers": [layer]}
    with pytest.warns(UserWarning, match="centre-cropped"):
        *_, summary, files = handlers.restore(**restore_args(image, "inpaint", editor=editor, class_spec="blue",
                                                             seed=3))
    record = json.loads(Path(files[1]).read_text())
    assert record["mask"] == "painted" and 0.05 < record["missing_fraction"] < 0.3
    assert record["class_name"] == "blue" and record["seed"] == 3 and summary.startswith("Done: inpaint")
    for task, extra, name in (("super-resolve", {"factor": 2}, "down2"), ("denoise", {"sigma": 0.2}, "noise0.2"),
                              ("chain", {"chain": "gray+mask"}, "gray+mask")):
        with pytest.warns(UserWarning) as notes:
            *_, summary, files = handlers.restore(**restore_args(image, task, editor=editor, **extra))
        assert json.loads(Path(files[1]).read_text())["degradation"] == name, summary
        ignored = any("used only for inpainting" in str(n.message) for n in notes)
        assert ignored == (task != "chain")  # painted strokes outside inpainting are ignored, and the page says so


def test_edit_handlers(handlers: Handlers, scene: Path, tmp_path: Path) -> None:
    second = write_scene(tmp_path / "second.png", (120, 120))
    gallery, summary, files = handlers.jitter("tiny", str(scene), "automatic", 0.01, 0, 0.5, 3)
    assert len(gallery) == 4 and gallery[0][1].startswith("reconstruction") and summary.startswith("Done: jitter")
    cached = len(handlers.cache._items)
    gallery, _, _ = handlers.jitter("tiny", str(scene), "automatic", 0.01, 0, 1.0, 2)  # a new sigma: no new fit
    assert len(gallery) == 3 and len(handlers.cache._items) == cached
    gallery, summary, files = handlers.transfer("tiny", str(scene), "automatic", 0.01, 0, ["green", "blue"])
    assert [caption for _, caption in gallery][1:] == ["green", "blue"] and len(files) == 3
    with pytest.raises(gr.Error, match="at least one class"):
        handlers.transfer("tiny", str(scene), "automatic", 0.01, 0, [])
    cached = len(handlers.cache._items)
    gallery, gif, _slider, frames, first, summary, files = handlers.morph(
        "tiny", str(scene), str(second), "automatic", "automatic", 0.01, 0, 4)
    assert len(gallery) == len(frames) == 4 and first is frames[0]
    assert len(handlers.cache._items) == cached + 2  # both reconstructed (together), both kept
    third = write_scene(tmp_path / "third.png", (60, 200))
    handlers.morph("tiny", str(scene), str(third), "automatic", "automatic", 0.01, 0, 3)
    assert len(handlers.cache._items) == cached + 3  # the first image came from the cache
    with Image.open(gif) as animation:
        assert animation.format == "GIF" and animation.n_frames >= 4
    assert handlers.show_frame(frames, 2) is frames[2] and handlers.show_frame([], 0) is None
    with pytest.raises(gr.Error) as excinfo:
        handlers.morph("tiny", str(scene), None, "automatic", "automatic", 0.01, 0, 4)
    assert page_error(excinfo) == "No second image uploaded yet"


def test_serve_without_gradio_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from dgp.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    monkeypatch.setattr(sys, "argv", ["dgp", "serve"])
    with pytest.raises(SystemExit) as excinfo:
        main()
    assert excinfo.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "dgp[web]" in lines[0]


# ------------------------------------------------------------------------------------------ browser



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dgp_serve(prior: str, folder: Path) -> Iterator[str]:
    """Run ``python -m dgp serve`` on a free local port (temporary files in ``folder``); yields its URL.

    At the end the server is interrupted as a user does (Ctrl-C), and must have removed its run folders.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = folder / "server.log"
    tmp = folder / "tmp"
    tmp.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TMPDIR": str(tmp),
           "GRADIO_TEMP_DIR": str(folder / "gradio"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dgp", "serve", "--prior", prior, "--port", str(port), "--max-upload-mb", "1",
               "--queue-size", "4"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
    try:
        deadline = time.monotonic() + 150
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dgp serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"dgp serve did not answer within 150 s:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # Gradio closes the server, then dgp removes its run folders
        try:
            proc.wait(timeout=60)  # generous: with 20 s, a loaded machine once left the run folders behind
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert not list(tmp.glob("dgp-web-*")), f"the run folders were not removed at exit:\n{log.read_text()[-3000:]}"


@contextmanager
def chromium_page(sync_api: Any, url: str) -> Iterator[tuple[Any, list[str]]]:
    """A page in headless Debian chromium; yields it with the list of requests it made outside ``url``."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            outside: list[str] = []
            local = (url, "data:", "blob:")
            page.on("request", lambda r: None if r.url.startswith(local) else outside.append(r.url))
            yield page, outside
        finally:
            browser.close()


# Records every progress text the page shows (Gradio's status tracker), for the check that progress was shown.
WATCH_PROGRESS = """() => {
  window.__progress = [];
  new MutationObserver(() => {
    for (const el of document.querySelectorAll('.progress-text, .progress-level-inner, .meta-text-center')) {
      const text = el.textContent.trim();
      if (text && !window.__progress.includes(text)) window.__progress.push(text);
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""

RESULT_SHOWN = """() => {
  const img = document.querySelector('#restore-result img');
  return img !== null && img.complete && img.naturalWidth > 0;
}"""

TRACKERS_IDLE = """() => [...document.querySelectorAll(
  '#restore-result [data-testid="status-tracker"], #restore-summary [data-testid="status-tracker"]')]
  .every(el => el.classList.contains('hide') || el.offsetParent === null)"""

ERROR_TOAST = "[...document.querySelectorAll('.toast-body')].some(t => t.innerText.startsWith('Error'))"


def run_and_wait(page: Any, task: str, timeout_s: float = 90.0) -> str:
    """Press Restore and wait until the summary says the task is done (failing at once on an error message)."""
    page.evaluate("() => { window.__progress = []; }")
    page.click("#restore-button")
    page.wait_for_function(f"""() => document.querySelector('#restore-summary').innerText.includes('Done: {task}')
                                     || {ERROR_TOAST}""", timeout=timeout_s * 1000)
    errors = [t for t in page.locator(".toast-body").all_inner_texts() if t.startswith("Error")]
    assert not errors, errors
    summary = page.inner_text("#restore-summary")
    assert f"Done: {task}" in summary
    page.wait_for_function(RESULT_SHOWN, timeout=15_000)
    page.wait_for_function(TRACKERS_IDLE, timeout=15_000)  # the progress finished
    return summary


def close_messages(page: Any) -> None:
    """Close every message, the last first (closing one re-numbers those after it); a message may also close
    by itself meanwhile."""
    closes = page.locator("[data-testid='toast-close']")
    for index in reversed(range(closes.count())):
        try:
            closes.nth(index).click(timeout=5_000)
        except Exception:  # noqa: BLE001 - playwright's timeout: that message went away by itself
            if closes.count() > index:
                raise
    page.wait_for_function("() => !document.querySelector('.toast-body')", timeout=15_000)


def paint_stroke(page: Any, selector: str) -> None:
    """Drag the mouse across the middle of the editor's canvas (the brush is the tool after an upload)."""
    box = page.locator(f"{selector} canvas").first.bounding_box()
    assert box is not None
    x0, y0 = box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.45
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + box["width"] * 0.03 * i, y0 + box["height"] * 0.01 * i, steps=2)
    page.mouse.up()
    page.wait_for_timeout(500)


@pytest.mark.browser
def test_browser_colorize_and_inpaint(tmp_path: Path, prior_dir: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium; setup.sh does it "
                    "when run as root)")
    scene = write_scene(tmp_path / "scene.png")
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image\n")
    update = os.environ.get("DGP_UPDATE_SCREENSHOT") == "1"
    shot = REPO / "docs" / "web-ui.png" if update else tmp_path / "web-ui.png"
    # For the README's picture a trained prior looks better than the random tiny one: DGP_SCREENSHOT_PRIOR
    # (a prior name or folder) is served instead, with its own iterations scale (slower).
    served = os.environ.get("DGP_SCREENSHOT_PRIOR", "") if update else ""
    run_timeout = 900.0 if served else 90.0

    with dgp_serve(served or str(prior_dir), tmp_path) as url, chromium_page(sync_api, url) as (page, outside):
        page.goto(url)
        page.wait_for_selector("#restore-image input[type=file]", state="attached", timeout=60_000)
        status = page.inner_text("#prior-status")
        assert status.startswith("prior ") if served else "prior tiny: 32x32 pixels, 3 classes" in status
        page.evaluate(WATCH_PROGRESS)

        # Upload and colorize.
        page.locator("#restore-image input[type=file]").set_input_files(str(scene))
        page.wait_for_function("() => document.querySelectorAll('#restore-image canvas').length > 0")
        page.wait_for_timeout(500)
        assert "class '" in run_and_wait(page, "colorize", run_timeout)
        progress = page.evaluate("() => window.__progress")
        assert any("stage" in p or "latent search" in p or "steps" in p for p in progress), progress

        # Inpainting with a mask file that is not an image: a clear message in the page.
        page.get_by_label("inpaint").check()
        page.get_by_text("More inputs").click()
        page.locator("#mask-file input[type=file]").set_input_files(str(not_image))
        page.wait_for_function("() => document.querySelector('#mask-file').innerText.includes('notes')")
        page.click("#restore-button")
        toast = page.locator(".toast-body").filter(has_text="not an image")
        toast.wait_for(timeout=30_000)
        assert "/" not in toast.inner_text()
        page.locator("#mask-file button[aria-label='Clear']").click()
        close_messages(page)
        page.get_by_text("More inputs").click()

        # Paint the missing region with the mouse, then inpaint.
        paint_stroke(page, "#restore-image")
        run_and_wait(page, "inpaint", run_timeout)
        names = page.locator("#restore-files a[download]").evaluate_all("els => els.map(e => e.download)")
        assert sorted(names) == ["result.png", "run.json"]
        record = page.request.get(page.locator("#restore-files a[download='run.json']").get_attribute("href")).json()
        assert record["command"] == "inpaint" and record["mask"] == "painted"
        assert 0.0 < record["missing_fraction"] < 0.6, record["missing_fraction"]
        assert page.evaluate("() => document.querySelector('#restore-observation img').naturalWidth") > 0

        close_messages(page)
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert outside == [], f"the page fetched from outside this machine: {outside}"
    with Image.open(shot) as im:
        assert im.size[0] >= 1000
