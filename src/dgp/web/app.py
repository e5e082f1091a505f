"""The Gradio page: a Restore tab and an Edit tab over :mod:`dgp.web.service`.

:class:`Handlers` holds the page's callbacks; each turns the page's values into a service call and every
user error into a message in the page (``gr.Error``, ``gr.Warning``), paths scrubbed. :func:`build_app` lays
out the page and wires the callbacks; :func:`launch` serves it safely by default: on 127.0.0.1, no share
link, no analytics, a bounded queue, an upload size limit.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
from PIL import Image

from dgp.degradations import DOWNSAMPLE_FACTORS
from dgp.priors.registry import DEFAULT_PRIOR, Prior
from dgp.reconstruct import ReconstructionError
from dgp.web.service import (
    AUTOMATIC,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    READABLE_FORMATS,
    TASKS,
    PriorCatalog,
    ReconstructionCache,
    RestoreRequest,
    RunFolders,
    UploadLimits,
    UserError,
    default_iterations_scale,
    open_upload,
    run_jitter,
    run_morph,
    run_restore,
    run_transfer,
    user_message,
)

log = logging.getLogger("dgp.web")

F = TypeVar("F", bound=Callable[..., Any])

SCALE_RANGE = (0.01, 2.0)
NOT_AN_IMAGE = f"The uploaded file is not an image that can be read (use {READABLE_FORMATS})."


def _readable_upload(preprocess: Callable[[Any], Any], payload: Any) -> Any:
    """Run a component's ``preprocess``; an unreadable upload ends in a clear message in the page (no path)."""
    try:
        return preprocess(payload)
    except gr.Error:
        raise
    except Exception:  # noqa: BLE001  (whatever PIL raises on a file that is not an image)
        raise gr.Error(NOT_AN_IMAGE, print_exception=False) from None


# Gradio renders a template component by its first base class, so each subclasses the Gradio class directly.
class CheckedImage(gr.Image):
    """``gr.Image`` with the unreadable-upload message."""

    is_template = True  # rendered by the page as a plain Image

    def preprocess(self, payload: Any) -> Any:
        return _readable_upload(super().preprocess, payload)


class CheckedImageEditor(gr.ImageEditor):
    """``gr.ImageEditor`` with the unreadable-upload message."""

    is_template = True  # rendered by the page as a plain ImageEditor

    def preprocess(self, payload: Any) -> Any:
        return _readable_upload(super().preprocess, payload)


def page_errors(fn: F) -> F:
    """Turn a callback's user errors into ``gr.Error`` messages; unexpected ones are logged, not shown."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (UserError, ReconstructionError) as exc:
            message = user_message(exc)
            raise gr.Error(message[:1].upper() + message[1:], print_exception=False) from None
        except Exception as exc:  # noqa: BLE001
            log.exception("request failed")
            raise gr.Error(f"the server could not finish this request ({type(exc).__name__}); the details are "
                           "in the server's log", print_exception=False) from None

    return wrapper  # type: ignore[return-value]


def _progress(progress: gr.Progress) -> Callable[[int, int, str], None]:
    def report(step: int, total: int, desc: str) -> None:
        progress((step, total), desc=desc, unit="steps")

    return report


def _warn(notes: Sequence[str]) -> None:
    for note in notes:
        gr.Warning(note[:1].upper() + note[1:] + ".")


class Handlers:
    """The page's callbacks (plain methods: tests call them directly).

    Args:
        catalog: the priors offered.
        limits: upload limits.
        runs: where each run writes its files.
        cache: reconstructions kept for editing.
    """

    def __init__(self, catalog: PriorCatalog, limits: UploadLimits | None = None, runs: RunFolders | None = None,
                 cache: ReconstructionCache | None = None) -> None:
        self.catalog = catalog
        self.limits = limits or UploadLimits()
        self.runs = runs or RunFolders()
        self.cache = cache or ReconstructionCache()

    # -- priors

    def prior(self, label: str) -> Prior:
        return self.catalog.load(label)

    def status(self, label: str) -> str:
        available, line = self.catalog.describe(label)
        return f"**{line}**" if available else f"⚠️ **{line}**"

    def class_choices(self, label: str) -> list[str]:
        try:
            return [AUTOMATIC, *self.prior(label).class_names]
        except UserError:
            return [AUTOMATIC]

    def scale_for(self, label: str) -> float:
        try:
            scale = default_iterations_scale(self.prior(label))
        except UserError:
            scale = 1.0
        return min(max(scale, SCALE_RANGE[0]), SCALE_RANGE[1])

    @page_errors
    def prior_changed(self, label: str) -> tuple[Any, ...]:
        """Status line, class choices and iterations scale for the chosen prior."""
        self.catalog.option(label)
        choices = self.class_choices(label)
        scale = self.scale_for(label)
        return (self.status(label),
                gr.Dropdown(choices=choices, value=AUTOMATIC), gr.Dropdown(choices=choices, value=AUTOMATIC),
                gr.Dropdown(choices=choices, value=AUTOMATIC), gr.Dropdown(choices=choices[1:], value=[]),
                gr.Slider(value=scale), gr.Slider(value=scale))

    # -- restore

    @staticmethod
    def task_changed(task: str) -> tuple[Any, ...]:
        """Show the options of the chosen task only."""
        return (gr.Radio(visible=task == "super-resolve"), gr.Slider(visible=task == "denoise"),
                gr.Textbox(visible=task == "chain"))

    @page_errors
    def restore(self, prior_label: str, editor: dict[str, Any] | None, task: str, factor: Any, sigma: float,
                chain: str, mask_file: str | None, reference_file: str | None, class_spec: str | None,
                iterations_scale: float | None, seed: float | None, degrade: bool,
                progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        """Restore the image in the editor; returns input, observation, result, summary and downloads."""
        editor = editor or {}
        background = editor.get("background")
        if background is None:
            raise UserError("upload an image first (drop it on the image box or click it)")
        prior = self.prior(prior_label)
        request = RestoreRequest(task=task, image=background, painted=editor.get("layers") or None,
                                 mask=mask_file or None, reference=reference_file or None,
                                 factor=int(factor or 4), sigma=float(sigma or 0.1), chain=chain or "",
                                 class_spec=class_spec, iterations_scale=_scale(iterations_scale),
                                 seed=_seed(seed), degrade=bool(degrade))
        out = run_restore(prior, prior_label, request, self.runs.new("restore"), self.limits, _progress(progress))
        _warn(out.notes)
        return (out.input_image, out.observation_image, out.result_image, _summary(out.summary, out.metrics),
                [str(p) for p in out.files])

    # -- edit

    @page_errors
    def jitter(self, prior_label: str, image_file: str | None, class_spec: str | None,
               iterations_scale: float | None, seed: float | None, sigma: float, count: float,
               progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        image = open_upload(image_file, "image", self.limits)
        out = run_jitter(self.prior(prior_label), prior_label, image, sigma=float(sigma), count=int(count),
                         class_spec=class_spec, iterations_scale=_scale(iterations_scale), seed=_seed(seed),
                         folder=self.runs.new("jitter"), cache=self.cache, progress=_progress(progress))
        return out.gallery, out.summary, [str(p) for p in out.files]

    @page_errors
    def transfer(self, prior_label: str, image_file: str | None, class_spec: str | None,
                 iterations_scale: float | None, seed: float | None, targets: Sequence[str] | None,
                 progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        image = open_upload(image_file, "image", self.limits)
        out = run_transfer(self.prior(prior_label), prior_label, image, targets=list(targets or []),
                           class_spec=class_spec, iterations_scale=_scale(iterations_scale), seed=_seed(seed),
                           folder=self.runs.new("transfer"), cache=self.cache, progress=_progress(progress))
        return out.gallery, out.summary, [str(p) for p in out.files]

    @page_errors
    def morph(self, prior_label: str, image_file: str | None, second_file: str | None, class_spec: str | None,
              class_b: str | None, iterations_scale: float | None, seed: float | None, frames: float,
              progress: gr.Progress = gr.Progress()) -> tuple[Any, ...]:
        first = open_upload(image_file, "first image", self.limits)
        second = open_upload(second_file, "second image", self.limits)
        out = run_morph(self.prior(prior_label), prior_label, first, second, frames=int(frames), class_a=class_spec,
                        class_b=class_b, iterations_scale=_scale(iterations_scale), seed=_seed(seed),
                        folder=self.runs.new("morph"), cache=self.cache, progress=_progress(progress))
        n = len(out.frames)
        return (out.gallery, str(out.gif), gr.Slider(maximum=n - 1, value=0, visible=True), out.frames,
                out.frames[0], out.summary, [str(p) for p in out.files])

    @staticmethod
    def show_frame(frames: list[Image.Image] | None, index: float) -> Image.Image | None:
        if not frames:
            return None
        return frames[min(max(int(index), 0), len(frames) - 1)]


def _scale(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not value > 0:
        raise UserError(f"the iterations scale must be positive, got {value:g}")
    return value


def _seed(value: float | None) -> int:
    if value is None:
        return 0
    seed = int(value)
    if not 0 <= seed < 2**63:
        raise UserError(f"the seed must be a non-negative integer, got {value}")
    return seed


def _summary(line: str, metrics: dict[str, float]) -> str:
    text = line.split("; ")[0] + "."
    if metrics:
        text += ("\n\n| | PSNR (dB) | SSIM |\n|---|---|---|\n"
                 f"| result | {metrics['psnr']:.2f} | {metrics['ssim']:.3f} |\n"
                 f"| observation | {metrics['observation_psnr']:.2f} | {metrics['observation_ssim']:.3f} |")
    return text


INTRO = """# dgp: Deep Generative Prior
Restore and edit images by inverting a pretrained BigGAN. Upload an image, choose a task and press the button;
the generator is fine-tuned to your image, so a run takes from seconds (small priors) to minutes."""

CSS = """
.dgp-out img { image-rendering: pixelated; }
#prior-status p { margin: 0; }
"""


def _out_image(label: str, elem_id: str, kind: str = "pil") -> gr.Image:
    """An output image: lossless, with download and fullscreen buttons (no "share": it posts to Hugging Face)."""
    return gr.Image(label=label, type=kind, format="png", interactive=False, buttons=["download", "fullscreen"],
                    elem_id=elem_id, elem_classes="dgp-out")


def build_app(priors: Sequence[str | Path] = (DEFAULT_PRIOR,), weights_dir: str | Path | None = None, *,
              max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int = DEFAULT_MAX_PIXELS,
              concurrency: int = 1, queue_size: int = 8, device: str = "cpu",
              work_dir: str | Path | None = None) -> gr.Blocks:
    """Build the page.

    Args:
        priors: priors to offer first (registry names or prior folders); the first is chosen at start. The
            packaged priors, the released priors found in ``weights_dir`` and the prior folders inside it are
            offered too.
        weights_dir: folder of released weights and prior folders (default: ``$DGP_WEIGHTS``).
        max_upload_mb: largest upload, in MB (enforced by :func:`launch` and again by the handlers).
        max_pixels: largest image, in pixels.
        concurrency: runs at a time.
        queue_size: runs waiting at most; later ones are refused with a message.
        device: where priors run (``cpu``, ``cuda``, ``cuda:N``).
        work_dir: where runs write their files (default: a new temporary folder).

    Returns:
        the Gradio Blocks, queue configured, with ``dgp_handlers`` (:class:`Handlers`) and
        ``dgp_max_upload_mb`` attributes.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if queue_size < 1:
        raise ValueError(f"queue_size must be at least 1, got {queue_size}")
    catalog = PriorCatalog(priors, weights_dir, device=device)
    handlers = Handlers(catalog, UploadLimits.from_mb(max_upload_mb, max_pixels), RunFolders(work_dir))
    label = catalog.default
    choices = handlers.class_choices(label)
    scale = handlers.scale_for(label)

    with gr.Blocks(title="dgp: Deep Generative Prior", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            prior = gr.Dropdown(catalog.labels, value=label, label="Prior", scale=1, elem_id="prior")
            status = gr.Markdown(handlers.status(label), elem_id="prior-status")
        with gr.Tabs():
            with gr.Tab("Restore", id="restore"):
                with gr.Row():
                    with gr.Column(scale=1):
                        editor = CheckedImageEditor(
                            label="Image (for inpainting, paint the missing region with the brush)",
                            type="pil", image_mode="RGBA", sources=["upload", "clipboard"], format="png",
                            brush=gr.Brush(colors=["#ff2d6f"], default_color="#ff2d6f", color_mode="fixed"),
                            eraser=gr.Eraser(), layers=False, transforms=(), elem_id="restore-image")
                        task = gr.Radio(list(TASKS), value="colorize", label="Task", elem_id="task")
                        factor = gr.Radio(list(DOWNSAMPLE_FACTORS), value=4, label="Upscaling factor",
                                          visible=False, elem_id="factor")
                        sigma = gr.Slider(0.01, 0.5, value=0.1, step=0.01, label="Noise sigma (on the [0, 1] scale)",
                                          visible=False, elem_id="sigma")
                        chain = gr.Textbox(label="Degradation chain", placeholder="e.g. gray+mask, down2+gray+hole, "
                                           "noise0.05+boxes3", visible=False, elem_id="chain")
                        restore_class = gr.Dropdown(choices, value=AUTOMATIC, label="Class",
                                                    info="automatic: chosen by the latent search",
                                                    allow_custom_value=True, elem_id="restore-class")
                        with gr.Row():
                            restore_scale = gr.Slider(*SCALE_RANGE, value=scale, step=0.01, label="Iterations scale",
                                                      elem_id="restore-scale")
                            restore_seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="restore-seed")
                        with gr.Accordion("More inputs", open=False):
                            mask_file = gr.File(label="Mask image (white = missing; instead of painting)",
                                                file_types=["image"], type="filepath", elem_id="mask-file")
                            reference_file = gr.File(label="Clean reference (to score the result)",
                                                     file_types=["image"], type="filepath", elem_id="reference-file")
                            degrade = gr.Checkbox(False, label="The image is clean: degrade it first (a demo; it is "
                                                  "then also the reference)", elem_id="degrade")
                        restore_button = gr.Button("Restore", variant="primary", elem_id="restore-button")
                    with gr.Column(scale=2):
                        with gr.Row():
                            input_view = _out_image("Input", "restore-input")
                            observation_view = _out_image("Observation", "restore-observation")
                            result_view = _out_image("Result", "restore-result")
                        restore_summary = gr.Markdown(elem_id="restore-summary")
                        restore_files = gr.File(label="Download (result and run.json)", file_count="multiple",
                                                interactive=False, elem_id="restore-files")
            with gr.Tab("Edit", id="edit"):
                with gr.Row():
                    edit_image = CheckedImage(label="Image", type="filepath", image_mode=None,
                                              sources=["upload", "clipboard"], elem_id="edit-image")
                    with gr.Column():
                        edit_class = gr.Dropdown(choices, value=AUTOMATIC, label="Class", allow_custom_value=True,
                                                 elem_id="edit-class")
                        edit_scale = gr.Slider(*SCALE_RANGE, value=scale, step=0.01, label="Iterations scale",
                                               elem_id="edit-scale")
                        edit_seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="edit-seed")
                with gr.Tabs():
                    with gr.Tab("Jitter", id="jitter"):
                        with gr.Row():
                            jitter_sigma = gr.Slider(0.0, 1.5, value=0.5, step=0.05, label="Jitter sigma",
                                                     elem_id="jitter-sigma")
                            jitter_count = gr.Slider(1, 16, value=8, step=1, label="Variations",
                                                     elem_id="jitter-count")
                        jitter_button = gr.Button("Reconstruct and jitter", variant="primary", elem_id="jitter-button")
                        jitter_gallery = gr.Gallery(label="Reconstruction and variations", columns=6, format="png",
                                                    elem_id="jitter-gallery", elem_classes="dgp-out")
                    with gr.Tab("Category transfer", id="transfer"):
                        targets = gr.Dropdown(choices[1:], value=[], multiselect=True, label="Classes",
                                              elem_id="transfer-classes")
                        transfer_button = gr.Button("Reconstruct and transfer", variant="primary",
                                                    elem_id="transfer-button")
                        transfer_gallery = gr.Gallery(label="Reconstruction, then each class", columns=6,
                                                      format="png", elem_id="transfer-gallery", elem_classes="dgp-out")
                    with gr.Tab("Morph", id="morph"):
                        with gr.Row():
                            second_image = CheckedImage(label="Second image", type="filepath", image_mode=None,
                                                        sources=["upload", "clipboard"], elem_id="morph-image")
                            with gr.Column():
                                morph_class = gr.Dropdown(choices, value=AUTOMATIC, label="Class of the second image",
                                                          allow_custom_value=True, elem_id="morph-class")
                                morph_frames = gr.Slider(2, 16, value=9, step=1, label="Frames", elem_id="morph-frames")
                                morph_button = gr.Button("Reconstruct both and morph", variant="primary",
                                                         elem_id="morph-button")
                        with gr.Row():
                            morph_gif = _out_image("Animation", "morph-gif", kind="filepath")
                            with gr.Column():
                                frame_view = _out_image("Frame", "morph-frame")
                                frame_index = gr.Slider(0, 8, value=0, step=1, label="Frame", visible=False,
                                                        elem_id="morph-frame-index")
                        morph_gallery = gr.Gallery(label="Frames", columns=9, format="png", elem_id="morph-gallery",
                                                   elem_classes="dgp-out")
                        frames_state = gr.State([])
                edit_summary = gr.Markdown(elem_id="edit-summary")
                edit_files = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="edit-files")

        prior.change(handlers.prior_changed, prior,
                     [status, restore_class, edit_class, morph_class, targets, restore_scale, edit_scale])
        task.change(handlers.task_changed, task, [factor, sigma, chain], queue=False)
        restore_button.click(
            handlers.restore,
            [prior, editor, task, factor, sigma, chain, mask_file, reference_file, restore_class, restore_scale,
             restore_seed, degrade],
            [input_view, observation_view, result_view, restore_summary, restore_files])
        jitter_button.click(handlers.jitter, [prior, edit_image, edit_class, edit_scale, edit_seed, jitter_sigma,
                                              jitter_count], [jitter_gallery, edit_summary, edit_files])
        transfer_button.click(handlers.transfer, [prior, edit_image, edit_class, edit_scale, edit_seed, targets],
                              [transfer_gallery, edit_summary, edit_files])
        morph_button.click(handlers.morph, [prior, edit_image, second_image, edit_class, morph_class, edit_scale,
                                            edit_seed, morph_frames],
                           [morph_gallery, morph_gif, frame_index, frames_state, frame_view, edit_summary, edit_files])
        frame_index.change(handlers.show_frame, [frames_state, frame_index], frame_view, queue=False)

    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency, api_open=False)
    demo.dgp_handlers = handlers  # type: ignore[attr-defined]
    demo.dgp_max_upload_mb = max_upload_mb  # type: ignore[attr-defined]
    return demo


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float | None = None,
           block: bool = True, quiet: bool = False) -> Any:
    """Serve ``demo``: no share link, no analytics, no server-side rendering, an upload size limit.

    Args:
        demo: from :func:`build_app`.
        host: address to listen on (127.0.0.1 by default: this machine only).
        port: port to listen on.
        max_upload_mb: largest upload (default: the one given to :func:`build_app`).
        block: serve until interrupted (``False``: return at once, the server running in a thread).
        quiet: print nothing.
    """
    mb = max_upload_mb if max_upload_mb is not None else getattr(demo, "dgp_max_upload_mb", DEFAULT_MAX_UPLOAD_MB)
    handlers = getattr(demo, "dgp_handlers", None)
    # Gradio copies the files a run returns into its cache, which it serves; it accepts them from the temporary
    # folder or the working directory. Only a run folder elsewhere (work_dir=...) needs to be allowed.
    allowed = []
    if handlers is not None:
        root = handlers.runs.root.resolve()
        if not any(root.is_relative_to(Path(p).resolve()) for p in (tempfile.gettempdir(), os.getcwd())):
            allowed.append(str(root))
    try:
        return demo.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                           max_file_size=max(1, int(mb * 1024 * 1024)), ssr_mode=False, pwa=False,
                           mcp_server=False, enable_monitoring=False, show_error=False, quiet=quiet,
                           footer_links=["settings"], allowed_paths=allowed, prevent_thread_lock=not block,
                           css=CSS)
    finally:
        if block and handlers is not None:
            handlers.runs.cleanup()


__all__ = ["CheckedImage", "CheckedImageEditor", "Handlers", "build_app", "is_loopback", "launch", "page_errors"]
