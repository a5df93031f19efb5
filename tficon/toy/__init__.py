"""The embedded toy model: a procedural toy world and a tiny text-to-image model trained on it.

``MODEL_DIR`` is the shipped diffusers ``StableDiffusionPipeline`` folder (with ``tficon.json``);
the world API renders scenes, single objects and backgrounds in four visual domains. ``tficon.toy.data`` renders
the model's data set, ``tficon.toy.detector`` and ``tficon.toy.reading`` read toy images back; the training and
evaluation pipeline is a tool of the repository (``python -m training.toy.train|quality|composition_quality``).
"""

from __future__ import annotations

from pathlib import Path

from tficon.toy.world import (
    COLOURS,
    DOMAINS,
    SHAPES,
    ObjectSpec,
    Scene,
    caption_words,
    make_caption,
    object_mask,
    random_scene,
    render_background,
    render_object,
    render_scene,
    render_spec,
)

MODEL_DIR: Path = Path(__file__).resolve().parent / "model"

__all__ = [
    "COLOURS",
    "DOMAINS",
    "MODEL_DIR",
    "SHAPES",
    "ObjectSpec",
    "Scene",
    "caption_words",
    "make_caption",
    "object_mask",
    "random_scene",
    "render_background",
    "render_object",
    "render_scene",
    "render_spec",
]
