"""One-call composition on top of the Session."""

from __future__ import annotations

from tficon.core.config import CompositionConfig


def compose(
    model,
    background,
    foreground,
    foreground_mask,
    mask_or_box,
    prompt: str,
    config: CompositionConfig | None = None,
    *,
    progress: bool = True,
    output_size: str = "background",
    paste_back: bool = False,
    feather: int = 8,
    **config_changes,
):
    """Compose ``foreground`` (its object given by ``foreground_mask``) into ``background`` at
    ``mask_or_box`` and return the result as a PIL image.

    ``model`` is a ``LoadedModel`` or a ``load_model`` spec ("toy", a hub id, a folder, a checkpoint);
    keyword arguments are ``CompositionConfig`` fields (mode, steps, tau_a, ...). ``output_size="background"``
    returns the result at the background's own size (as the CLI saves it); ``"working"`` at the size the model
    worked at. ``paste_back=True`` (with the background's size only) keeps the original background's pixels
    outside the object's window (scaled to the background's size) grown by ``feather`` pixels, the composed
    pixels inside the window and a linear ramp between (``tficon.core.io.paste_back``). For inspection, rewinding and
    re-running, use ``tficon.Session`` directly.
    """
    from tficon.composition.session import Session
    from tficon.core import io

    if output_size not in ("background", "working"):
        raise ValueError(f'output_size must be "background" or "working", got {output_size!r}')
    if not isinstance(paste_back, bool):
        raise TypeError(f"paste_back must be True or False, got {paste_back!r}")
    feather = io.check_feather(feather)
    if paste_back and output_size == "working":
        raise ValueError('paste_back=True pastes onto the background at its own size; it needs output_size="background"')
    session = Session(
        model, background, foreground, foreground_mask, mask_or_box, prompt, config, progress=progress, **config_changes
    )
    if output_size == "working":
        return session.result
    return result_at_background_size(session, paste_back=paste_back, feather=feather)


def result_at_background_size(session, *, paste_back: bool = False, feather: int = 8):
    """``session.result`` at the background's own size (``io.resize_result``); with ``paste_back``, only the
    object's window of it (``placement.target_window`` scaled to that size), feathered by ``feather`` pixels,
    pasted onto the original background (``io.paste_back``)."""
    from tficon.core import io

    original = session.images["background"]
    result = io.resize_result(session.result, original.size)
    if not paste_back:
        return result
    window = io.scale_window(session.placement.target_window, session.image_size, (original.height, original.width))
    return io.paste_back(original, result, window, feather)
