"""Shared set-up for tests that drive a Session on the tiny random SD 2.x-shaped model (test support)."""

from __future__ import annotations

from tficon.composition.session import Session

SIZE = 128  # tiny models: 16x16 latents, attention at 16, 8 and 4


def new_session(model, sample, *, steps: int, **config) -> Session:
    """A Session on ``sample`` (a tficon.toy.samples.Sample) at the tiny models' working size."""
    return Session(
        model, sample.background, sample.foreground, sample.foreground_mask, sample.box, sample.prompt,
        image_size=SIZE, steps=steps, **config,
    )


def check_explorer_kernel_side(model, sample) -> None:
    """The Explorer runs a Session on ``model`` to the end and re-runs after a tau_a change, with no error."""
    from tficon.widgets import Explorer

    explorer = Explorer(new_session(model, sample, steps=4), threaded=False)
    try:
        explorer.run()
        assert explorer.last_error is None and explorer.session.done
        explorer.controls["tau_a"].value = 0.0
        assert explorer.last_error is None and explorer.session.config.tau_a == 0.0 and explorer.session.done
    finally:
        explorer.close()
