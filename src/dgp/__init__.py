"""Deep Generative Prior: image restoration and manipulation by inverting a pretrained BigGAN."""

__version__ = "0.1.0"
