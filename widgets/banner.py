"""The Explorer's banner: the warnings and the error of the last run, shown where the user is looking.

The work runs on the Explorer's worker thread, so a warning the library raises there (the toy model's "knows only
its toy world", an attention capture that left maps out) would go to the kernel's log, never to the page. The
worker catches each job's warnings (``tficon.widgets.worker``) and the Explorer hands them here; an error (a
refused input, a non-finite step) comes here as well as to the status line. The banner sits right under the
status line and is hidden while it has nothing to say.

The toy model's notice is the Explorer's own (:func:`toy_world_notice`): the library says it once per process, but
the page should say it for every run whose prompt leaves the toy world, in the Explorer's words (it names no
Python call, since the user is in a widget).
"""

from __future__ import annotations

import html
import re

import ipywidgets as widgets

from .panel import Panel

__all__ = ["BannerPanel", "toy_world_notice", "words_outside"]

#: Part of the library's toy-world warning; the banner shows :func:`toy_world_notice` in its place.
TOY_WORLD_MARK = "knows only its toy world"


def words_outside(prompt: str, vocabulary) -> list[str]:
    """The words of ``prompt`` (lower-cased, as the toy tokenizer splits them: words and commas) that are not in
    ``vocabulary``, sorted; [] when the model has no closed vocabulary (``vocabulary`` None)."""
    if vocabulary is None:
        return []
    return sorted({w for w in re.findall(r"[\w']+|,", prompt.lower()) if w not in vocabulary})


def toy_world_notice(session) -> str | None:
    """What the banner says when the Session's prompt leaves the model's closed vocabulary (the toy model); None
    when every word is known or the model is open-vocabulary (Stable Diffusion)."""
    vocabulary = getattr(session.model, "vocabulary", None)
    unknown = words_outside(session.prompt, vocabulary)
    if not unknown:
        return None
    shown = ", ".join(repr(w) for w in unknown[:6]) + (", ..." if len(unknown) > 6 else "")
    known = ", ".join(sorted(w for w in vocabulary if w.isalpha() and len(w) > 2)[:10])
    return (
        f"the toy model knows only its toy world (4 shapes, 4 colours, 4 styles, 64 px): the prompt's words {shown} "
        f"mean nothing to it, so expect the object to be lost. Its words include {known}, ...; real photos and "
        "open prompts need a Stable Diffusion model."
    )


class BannerPanel(Panel):
    """``view`` (CSS class ``tficon-banner``): the error (red) and the warnings (amber) of the last run; hidden
    when there are none. ``warnings`` and ``error`` hold the texts shown; ``dismiss`` hides them until the next."""

    def build(self) -> widgets.Widget:
        self.warnings: list[str] = []
        self.error: str | None = None
        self.view = widgets.HTML("")
        self.view.add_class("tficon-banner")
        self.dismiss = widgets.Button(description="dismiss", layout=widgets.Layout(width="70px"))
        self.dismiss.add_class("tficon-banner-dismiss")
        self.dismiss.on_click(lambda _b: self.clear())
        self.box = widgets.HBox([self.view, self.dismiss], layout=widgets.Layout(display="none", align_items="flex-start"))
        return self.box

    # called on the worker thread (or by the dismiss button: only widget values change)
    def add_warning(self, text: str) -> None:
        """Show ``text`` among the warnings (once: a repeated warning is not listed twice)."""
        if text not in self.warnings:
            self.warnings.append(text)
            self._draw()

    def set_error(self, text: str | None) -> None:
        """Show ``text`` as the error (None: no error)."""
        if text != self.error:
            self.error = text
            self._draw()

    def clear(self) -> None:
        """Hide every message (a new run begins, or the user dismissed them)."""
        self.warnings, self.error = [], None
        self._draw()

    def _draw(self) -> None:
        parts = []
        if self.error:
            parts.append(
                "<div style='background:#fde8e8;border-left:4px solid #b00020;padding:4px 8px;margin:2px 0;"
                f"font-size:12px;white-space:normal'><b>error</b> &middot; {html.escape(self.error)}</div>"
            )
        for text in self.warnings:
            parts.append(
                "<div style='background:#fff4d6;border-left:4px solid #c77700;padding:4px 8px;margin:2px 0;"
                f"font-size:12px;white-space:normal'><b>warning</b> &middot; {html.escape(text)}</div>"
            )
        self.view.value = "".join(parts)
        self.view.layout.width = "calc(100% - 80px)"
        self.box.layout.display = "flex" if parts else "none"
