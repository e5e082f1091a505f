"""Names and settings shared by the library and the ``dgp`` command, in a module that imports nothing.

The command builds its help (defaults, choices) from these without importing torch, so that ``dgp --help``
and a mistyped command line answer at once; the modules they belong to re-export them.
"""

#: The prior used when none is named (:mod:`dgp.priors.registry`).
DEFAULT_PRIOR = "cifar10"

#: Environment variable naming the folder of released BigGAN weights (:mod:`dgp.priors.registry`).
WEIGHTS_ENV = "DGP_WEIGHTS"

#: Default degradation and preset of each restoration task (:mod:`dgp.pipeline`).
TASKS: dict[str, tuple[str, str]] = {
    "colorize": ("gray", "colorization"),
    "inpaint": ("hole", "inpainting"),
    "super-resolve": ("down4", "sr"),
    "denoise": ("noise0.1", "denoising"),
    "reconstruct": ("id", "reconstruction"),
}

#: Tasks of ``dgp batch``: the restoration tasks, and ``restore`` with any degradation chain
#: (:mod:`dgp.batch.runner`).
BATCH_TASKS = (*TASKS, "restore")

#: Strengths of random jittering (:func:`dgp.manipulate.jitter`).
JITTER_SIGMAS = (0.3, 0.5, 0.7)

#: In the quality benchmark's quick setting the ablations and the random generator run on these tasks only
#: (:mod:`dgp.bench.quality`).
QUICK_ABLATION_TASKS = ("sr4",)
#: Settings of the quality benchmark's ``--quick`` (each can still be given explicitly): about 18 minutes on 2
#: CPU cores shared with a training job (a DGP restoration of 30 steps then takes 5-7 s, a GAN inversion 3 s,
#: DIP 4 s).
QUICK = {"n": 10, "iterations_scale": 0.03, "candidates": 30, "dip_iterations": 150}
