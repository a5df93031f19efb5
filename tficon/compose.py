"""One-call composition on top of the Session."""

from __future__ import annotations

from .config import CompositionConfig


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
    **config_changes,
):
    """Compose ``foreground`` (its object given by ``foreground_mask``) into ``background`` at
    ``mask_or_box`` and return the result as a PIL image.

    ``model`` is a ``LoadedModel`` or a ``load_model`` spec ("toy", a hub id, a folder, a checkpoint);
    keyword arguments are ``CompositionConfig`` fields (mode, steps, tau_a, ...). ``output_size="background"``
    returns the result at the background's own size (as the CLI saves it); ``"working"`` at the size the model
    worked at. For inspection, rewinding and re-running, use ``tficon.Session`` directly.
    """
    from . import io
    from .session import Session

    if output_size not in ("background", "working"):
        raise ValueError(f'output_size must be "background" or "working", got {output_size!r}')
    session = Session(
        model, background, foreground, foreground_mask, mask_or_box, prompt, config, progress=progress, **config_changes
    )
    if output_size == "working":
        return session.result
    return io.resize_result(session.result, session.images["background"].size)
