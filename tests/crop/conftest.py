"""Fixtures for the crop tests: small synthetic inputs."""

from __future__ import annotations

import pytest

from plankton_core.imageio import encode_png
from plankton_core.store import open_store
from plankton_core.synth import SynthConfig, generate, render_frame


@pytest.fixture
def synth_input(tmp_path):
    """A small class-folder tree of generated frames; returns its path."""
    path = tmp_path / "images"
    generate(open_store(str(path)), SynthConfig(classes=3, per_class=6, size=48, seed=11))
    return str(path)


@pytest.fixture
def one_object_png():
    """Encoded 48-px frames holding one whole object each (deterministic)."""
    import numpy as np

    def make(seed: int = 0, dark: bool = True) -> bytes:
        rng = np.random.default_rng(seed)
        while True:
            frame, objects = render_frame("diatom", rng, 48, dark, 1, 0.0, 4.0)
            if objects:
                return encode_png(frame)

    return make
