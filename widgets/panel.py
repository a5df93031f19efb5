"""The one small protocol every part of the Explorer follows.

The Explorer (``tficon.widgets.explorer``) is a column of panels: the status line, the inputs, the
settings, the steps and the attention. Each panel is a :class:`Panel`:

- ``build()`` makes its widgets once and returns the widget the Explorer places in its column;
- ``render(session, step)``: the user looks at step ``step`` (the scrubbed step): show it;
- ``on_change(session, change)``: the Session changed (a :class:`Change` says how): bring the views up to date.

``render`` and ``on_change`` run on the Explorer's worker thread with its lock held, so a panel may read
the Session freely there. Widget events (a slider moved, a box drawn) arrive on the main thread: a panel
never touches the Session from them, it calls the Explorer's public API (``update``, ``show_step``...),
which queues the work. Panels keep no state for tests: what they show is what their widgets hold.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ipywidgets as widgets

if TYPE_CHECKING:  # the Explorer imports the panels, not the other way round
    from .explorer import Explorer

__all__ = ["Panel", "Change", "STARTED", "SETTINGS_CHANGED", "STEPS_DROPPED", "STEP_COMPUTED", "FINISHED", "section"]

#: The kinds of :class:`Change`.
STARTED = "started"  # the Explorer opened on the Session: show everything it holds
SETTINGS_CHANGED = "settings"  # ``Session.update(**changes)`` was applied or rejected; ``names``: the changes' names
STEPS_DROPPED = "dropped"  # steps ``step``.. were forgotten (they are recomputed by the next run)
STEP_COMPUTED = "computed"  # step ``step`` was just computed
FINISHED = "finished"  # a run stopped: the Session is done (or paused, see ``session.done``)


@dataclass(frozen=True)
class Change:
    """What happened to the Session: ``kind`` (one of the constants above), the ``names`` given to
    ``Session.update`` (for ``SETTINGS_CHANGED``) and the ``step`` it concerns (``STEPS_DROPPED``, ``STEP_COMPUTED``)."""

    kind: str
    names: frozenset[str] = frozenset()
    step: int | None = None


class Panel:
    """One part of the Explorer (see the module docstring). Subclasses override what they need.

    ``heading``: the section title the Explorer shows above the panel (None: no heading)."""

    heading: str | None = None

    def __init__(self, explorer: "Explorer"):
        self.explorer = explorer
        self._local = threading.local()

    def build(self) -> widgets.Widget:
        """Make the panel's widgets; returns the widget placed in the Explorer's column."""
        raise NotImplementedError

    def render(self, session, step: int) -> None:
        """Show step ``step`` of ``session`` (the step the user looks at)."""

    def on_change(self, session, change: Change) -> None:
        """Bring the panel up to date after ``change``."""

    # ---- for widget observers: was a value set by the panel itself, or by the user?
    @property
    def syncing(self) -> bool:
        """True while the panel itself sets its widgets' values. Per thread: observers run in the thread that
        sets the value, so a user event arriving on the main thread while the worker syncs is never swallowed."""
        return getattr(self._local, "syncing", False)

    def quietly(self) -> "_Quietly":
        """``with panel.quietly(): widget.value = ...``: a value set here is not taken for user input."""
        return _Quietly(self._local)


class _Quietly:
    def __init__(self, local: threading.local):
        self._local = local

    def __enter__(self) -> None:
        self._previous = getattr(self._local, "syncing", False)
        self._local.syncing = True

    def __exit__(self, *_exc) -> None:
        self._local.syncing = self._previous


def section(text: str) -> widgets.HTML:
    """A heading with a rule above it, between two panels."""
    return widgets.HTML(f"<div style='border-top:1px solid #ccc;margin-top:6px;padding-top:2px'><b>{text}</b></div>")
