"""The sample figure picks a scatter for points and a grid for images (any trailing shape)."""

import numpy as np

from pipelines.plots import samples_figure


def test_points_become_a_scatter():
    fig = samples_figure(np.random.default_rng(0).normal(size=(100, 2)), "points")
    assert len(fig.axes) == 1 and len(fig.axes[0].collections) == 1


def test_images_become_a_grid():
    images = np.random.default_rng(0).integers(0, 256, size=(70, 1, 8, 8)).astype(np.float32)
    fig = samples_figure(images, "digits")
    assert len(fig.axes) == 64  # an 8x8 grid: the first 64 of 70 images
    assert sum(len(ax.images) for ax in fig.axes) == 64
