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
    **config_changes,
):
    """Compose ``foreground`` (its object given by ``foreground_mask``) into ``background`` at
    ``mask_or_box`` and return the result as a PIL image.

    ``model`` is a ``LoadedModel`` or a ``load_model`` spec ("toy", a hub id, a folder, a checkpoint);
    keyword arguments are ``CompositionConfig`` fields (mode, steps, tau_a, ...). For inspection,
    rewinding and re-running, use ``tficon.Session`` directly.
    """
    from .session import Session

    session = Session(
        model, background, foreground, foreground_mask, mask_or_box, prompt, config, progress=progress, **config_changes
    )
    return session.result
