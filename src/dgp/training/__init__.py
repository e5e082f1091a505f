"""Training priors and classifiers on image folders."""
