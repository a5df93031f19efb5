"""A recipe: everything a Session's composition depends on, as one JSON document that reproduces it exactly.

A recipe holds the model spec and dtype, the working size, the prompt, every composition setting, the target (a box
in working-image pixels, or the user mask) and the three input pictures, embedded as lossless PNG (so one file is
the whole composition: nothing refers to files that may move). Two ways back:

- ``session_from_recipe(recipe)``: a ``Session`` whose final latent equals the original's bit for bit;
- ``compose_arguments(recipe, folder)``: writes the inputs as PNG files into ``folder`` and returns the
  ``tficon compose`` arguments (all but ``--out``) that compose the same image. The target becomes a mask at the
  working size (``--mask``): the Session reads a mask in fractions of its own size, so a working-size mask holding
  the box is the box itself.

Format (``"format": "tficon-recipe"``, ``"version": 1``): ``model``, ``dtype``, ``image_size`` ``[H, W]``,
``prompt``, ``settings`` ``{name: value}`` over ``tficon.core.config.SETTINGS``, ``box`` ``[x, y, w, h]`` or
null, and ``images``: ``{"background", "foreground", "foreground_mask", "target_mask" (only without a box)}`` as
``data:image/png;base64,...`` strings.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from tficon.core.boxes import as_user_box
from tficon.core.config import SETTINGS, CompositionConfig

__all__ = ["FORMAT", "VERSION", "recipe_from_session", "session_from_recipe", "compose_arguments", "save_recipe", "load_recipe"]

FORMAT = "tficon-recipe"
VERSION = 1
_PNG_PREFIX = "data:image/png;base64,"


def _png_data(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _PNG_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_of(data: str, name: str) -> Image.Image:
    if not isinstance(data, str) or not data.startswith(_PNG_PREFIX):
        raise ValueError(f"recipe images[{name!r}] must be a {_PNG_PREFIX}... string")
    with Image.open(io.BytesIO(base64.b64decode(data[len(_PNG_PREFIX):]))) as opened:
        opened.load()
        return opened.copy()


def _mask_image(mask) -> Image.Image:
    """A mask (PIL "1"/"L", a uint8 or bool array) as a greyscale PNG-able image with the same pixels."""
    if isinstance(mask, Image.Image):
        return mask if mask.mode == "L" else mask.convert("L")
    array = np.asarray(mask)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array.astype(np.uint8), mode="L")


def recipe_from_session(session) -> dict[str, Any]:
    """The recipe of ``session``'s current settings and inputs (a JSON-safe dict)."""
    config = session.config
    box = as_user_box(session.mask_or_box, name="mask_or_box")
    images = {
        "background": _png_data(session.images["background"]),
        "foreground": _png_data(session.images["foreground"]),
        "foreground_mask": _png_data(_mask_image(session.foreground_mask)),
    }
    if box is None:
        images["target_mask"] = _png_data(_mask_image(session.mask_or_box))
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": str(session.model.spec),
        "dtype": str(session.model.dtype).replace("torch.", ""),
        "image_size": [int(v) for v in session.image_size],
        "prompt": session.prompt,
        "settings": {s.name: getattr(config, s.name) for s in SETTINGS},
        "box": None if box is None else [int(v) for v in box],
        "images": images,
    }


def _checked(recipe: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(recipe, Mapping) or recipe.get("format") != FORMAT:
        raise ValueError(f"recipe must be a mapping with \"format\": {FORMAT!r} (what recipe_from_session writes)")
    if recipe.get("version") != VERSION:
        raise ValueError(f"recipe version {recipe.get('version')!r} is not supported (this tficon reads version {VERSION})")
    missing = [k for k in ("model", "image_size", "prompt", "settings", "box", "images") if k not in recipe]
    if missing:
        raise ValueError(f"recipe lacks {', '.join(missing)}")
    unknown = sorted(set(recipe["settings"]) - {s.name for s in SETTINGS})
    if unknown:
        raise ValueError(f"recipe settings {unknown} are not settings of this tficon ({', '.join(s.name for s in SETTINGS)})")
    return recipe


def config_of(recipe: Mapping[str, Any]) -> CompositionConfig:
    """The recipe's ``CompositionConfig`` (settings it does not name keep their defaults)."""
    return CompositionConfig(**_checked(recipe)["settings"])


def session_from_recipe(recipe: Mapping[str, Any], model=None, **session_options):
    """A ``Session`` that composes exactly what the recipe's Session composed.

    model: a loaded model to use (default: ``tficon.load_model(recipe["model"], dtype=recipe["dtype"])``);
    session_options: further ``Session`` keyword arguments (``engine``, ``threads``, ``progress``).
    """
    from tficon.composition.session import Session

    recipe = _checked(recipe)
    if model is None:
        from tficon.model import load_model

        model = load_model(recipe["model"], dtype=recipe.get("dtype"))
    images = recipe["images"]
    target = tuple(recipe["box"]) if recipe["box"] is not None else np.asarray(_image_of(images["target_mask"], "target_mask")) > 127
    return Session(
        model,
        _image_of(images["background"], "background").convert("RGB"),
        _image_of(images["foreground"], "foreground").convert("RGB"),
        _image_of(images["foreground_mask"], "foreground_mask"),
        target,
        recipe["prompt"],
        config_of(recipe),
        image_size=tuple(recipe["image_size"]),
        **session_options,
    )


def _flag_value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def compose_arguments(recipe: Mapping[str, Any], folder: str | Path) -> list[str]:
    """Write the recipe's inputs into ``folder`` (background.png, foreground.png, foreground_mask.png, target.png)
    and return the ``tficon compose`` arguments (without ``--out``) that compose the same image."""
    recipe = _checked(recipe)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = recipe["images"]
    paths = {name: folder / f"{name}.png" for name in ("background", "foreground", "foreground_mask")}
    for name, path in paths.items():
        _image_of(images[name], name).save(path)
    height, width = recipe["image_size"]
    target = folder / "target.png"
    if recipe["box"] is not None:  # a mask at the working size holding the box is read as the box itself
        x, y, w, h = recipe["box"]
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[y : y + h, x : x + w] = 255
        Image.fromarray(mask, mode="L").save(target)
    else:
        _image_of(images["target_mask"], "target_mask").save(target)
    args = [
        "compose", "--model", recipe["model"], "--background", str(paths["background"]),
        "--foreground", str(paths["foreground"]), "--foreground-mask", str(paths["foreground_mask"]),
        "--mask", str(target), "--prompt", recipe["prompt"], "--size", f"{width}x{height}", "--output-size", "working",
    ]  # fmt: skip
    if recipe.get("dtype"):
        args += ["--dtype", recipe["dtype"]]
    settings = recipe["settings"]
    for setting in SETTINGS:
        value = settings.get(setting.name, setting.default)
        if setting.switch:
            if value:
                args.append(setting.flag)
        elif value is not None and (value != setting.default or setting.name == "mode"):
            args += [setting.flag, _flag_value(value)]
    return args


def save_recipe(session, path: str | Path) -> Path:
    """Write ``recipe_from_session(session)`` as JSON to ``path``; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(recipe_from_session(session), indent=1) + "\n")
    return path


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe JSON file (checked)."""
    try:
        recipe = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"recipe {path}: not JSON ({error})") from None
    return dict(_checked(recipe))
