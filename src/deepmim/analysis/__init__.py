"""Analysis and pictures of runs (the paper's claims made measurable grow here)."""

from .plots import plot_loss_curves, plot_reconstructions, reconstruction_grid

__all__ = ["plot_loss_curves", "plot_reconstructions", "reconstruction_grid"]
