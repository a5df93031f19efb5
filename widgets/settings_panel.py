"""The Explorer's settings: the prompt, one control per setting, and the Step / Run / Rewind / Stop buttons.

The controls come from the one list of settings, ``tficon.core.config.SETTINGS``: each ``Setting`` with a
``control`` gets a widget of that kind ("slider": a float slider over its ``range`` by its ``step``; "int": a
bounded number field over its ``range``; "dropdown": its ``choices``; "checkbox": a parity switch, gathered in a
collapsed "official-code switches" section; "text": a text field, applied on Enter or when it loses focus; "layers":
the same with the model's self-attention layer selections offered as suggestions, ``layer_suggestions``), its
``help`` as hover text and the CSS class ``tficon-<name-with-dashes>``. A new setting declared in
``CompositionConfig`` appears here by itself.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from tficon.core.config import SETTINGS, Setting

from . import _compat
from .panel import FINISHED, SETTINGS_CHANGED, STARTED, STEP_COMPUTED, Change, Panel

__all__ = ["SettingsPanel", "control_for", "layer_suggestions"]

_LABEL_STYLE = {"description_width": "62px"}
#: The control kinds, in the order their rows are laid out.
KINDS = ("slider", "int", "dropdown", "checkbox", "text", "layers")


def layer_suggestions(layers) -> list[str]:
    """What a "layers" control offers: ``all``, the UNet's parts, then every block prefix and layer name of ``layers``
    (``Session.attention_layers``), e.g. ``up_blocks.1`` and ``up_blocks.1.attentions.0.transformer_blocks.0.attn1``.
    Any other text can still be typed (a comma-separated list)."""
    from tficon.core.layers import ALL_LAYERS, LAYER_PARTS

    blocks = [".".join(name.split(".")[:2]) for name in layers if name.split(".")[0] != "mid_block"]
    return list(dict.fromkeys([ALL_LAYERS, *LAYER_PARTS, *blocks, *layers]))


def control_for(setting: Setting, *, suggestions=()) -> widgets.Widget:
    """The widget of one setting (``setting.control`` says which kind), with its CSS class and hover text.
    ``suggestions``: what a "layers" control offers (``layer_suggestions``)."""
    kind = setting.control
    if kind == "slider":
        low, high = setting.control_span
        control = widgets.FloatSlider(
            min=low, max=high, step=setting.step, description=setting.name, continuous_update=False,
            readout_format=".2f", style=_LABEL_STYLE, layout=widgets.Layout(width="300px"),
        )
    elif kind == "int":
        low, high = setting.control_span
        control = widgets.BoundedIntText(
            min=low, max=high, description=setting.name, continuous_update=False, style=_LABEL_STYLE,
            layout=widgets.Layout(width="200px"),
        )
    elif kind == "dropdown":
        control = widgets.Dropdown(
            options=list(setting.choices), description=setting.name, style=_LABEL_STYLE, layout=widgets.Layout(width="170px")
        )
    elif kind == "checkbox":
        control = widgets.Checkbox(value=bool(setting.default), description=setting.name, indent=False)
    elif kind in ("text", "layers"):
        # not continuous: a half-typed layer name or word is not applied (and not refused) at every key press
        make = widgets.Combobox if kind == "layers" else widgets.Text
        extra = {"options": list(suggestions), "ensure_option": False} if kind == "layers" else {}
        control = make(
            value=str(setting.default), description=setting.name, continuous_update=False, style=_LABEL_STYLE,
            layout=widgets.Layout(width="280px"), **extra,
        )  # fmt: skip
    else:
        raise ValueError(
            f"setting {setting.name!r} has an unknown control {kind!r}; known: slider, int, dropdown, checkbox, text, layers"
        )
    control.add_class(f"tficon-{setting.name.replace('_', '-')}")
    _compat.set_help(control, setting.help)
    return control


def _shown_value(config, setting: Setting) -> Any:
    """The value a control shows: the config's, except a guidance of None shows the guidance in use."""
    if setting.name == "guidance":
        return config.effective_guidance
    return getattr(config, setting.name)


class SettingsPanel(Panel):
    """``controls``: ``{"prompt": Text, <setting name>: widget}``; ``buttons``: Step, Run, Rewind, Stop;
    ``auto_run``: run the remaining steps after a change; ``change_label``: what the last change recomputed."""

    heading = "settings"

    def __init__(self, explorer, *, auto_run: bool = True):
        super().__init__(explorer)
        self._auto_run = auto_run

    def build(self) -> widgets.Widget:
        ex = self.explorer
        self.prompt = widgets.Text(
            value=ex.session.prompt, description="prompt", continuous_update=False, style=_LABEL_STYLE,
            layout=widgets.Layout(width="560px"),
        )
        self.prompt.add_class("tficon-prompt")
        self.prompt.observe(lambda c: self._on_control("prompt", c), names="value")
        self.controls: dict[str, widgets.Widget] = {"prompt": self.prompt}
        self.settings = [s for s in SETTINGS if s.control is not None]
        suggestions = layer_suggestions(ex.session.attention_layers)
        for setting in self.settings:
            control = control_for(setting, suggestions=suggestions)
            control.observe(lambda c, n=setting.name: self._on_control(n, c), names="value")
            self.controls[setting.name] = control
        by_kind = {kind: [self.controls[s.name] for s in self.settings if s.control == kind] for kind in KINDS}

        def button(description: str, action, style: str = "") -> widgets.Button:
            b = widgets.Button(description=description, button_style=style, layout=widgets.Layout(width="76px"))
            b.add_class(f"tficon-{description.lower()}")
            b.on_click(lambda _b: action())
            return b

        self.auto_run = widgets.Checkbox(value=self._auto_run, description="auto-run after a change", indent=False)
        self.buttons = {
            "step": button("Step", ex.step),
            "run": button("Run", ex.run, "primary"),
            "rewind": button("Rewind", lambda: ex.rewind()),
            "stop": button("Stop", ex.stop),  # grey while idle; amber while a run goes on (on_change)
        }
        self.change_label = widgets.HTML("")
        self.change_label.add_class("tficon-last-change")
        rows: list[widgets.Widget] = [
            widgets.HBox([self.prompt, *by_kind["dropdown"]]),
            widgets.HBox([*by_kind["layers"], *by_kind["text"]], layout=widgets.Layout(flex_flow="row wrap")),
            widgets.HBox(
                [
                    widgets.VBox(by_kind["slider"]),
                    widgets.VBox(by_kind["int"]),
                    widgets.VBox([widgets.HBox(list(self.buttons.values())), self.auto_run, self.change_label]),
                ],
                layout=widgets.Layout(flex_flow="row wrap"),
            ),
        ]
        if by_kind["checkbox"]:
            # off = the official code's behaviour; collapsed, since most users never need them
            self.switches = widgets.Accordion(children=[widgets.VBox(by_kind["checkbox"])], selected_index=None)
            self.switches.set_title(0, "official-code switches (all off = the official TF-ICON code)")
            self.switches.add_class("tficon-switches")
            rows.append(self.switches)
        return widgets.VBox(rows)

    # ---- main thread
    def _on_control(self, name: str, change) -> None:
        if self.syncing:
            return
        value = change["new"]
        if name == "guidance":
            value = float(value)
        self.explorer.update(**{name: value})

    # ---- worker thread
    def on_change(self, session, change: Change) -> None:
        if change.kind in (STARTED, SETTINGS_CHANGED):
            self.sync(session)
        if change.kind == STEP_COMPUTED:
            self.buttons["stop"].button_style = "warning"  # a run is going on: Stop means something now
        elif change.kind == FINISHED:
            self.buttons["stop"].button_style = ""

    def sync(self, session) -> None:
        """Controls show the Session's settings (after an update, or to undo a rejected change)."""
        config = session.config
        with self.quietly():
            self.prompt.value = session.prompt
            for setting in self.settings:
                control, value = self.controls[setting.name], _shown_value(config, setting)
                if setting.control == "slider" and value > control.max:  # a config set in code may pass the slider's end
                    control.max = value
                control.value = value

    def show_last_change(self, what: str, first: int | None, steps: int) -> None:
        effect = "no step changes" if first is None else f"steps {first}..{steps} recomputed"
        self.change_label.value = f"<span style='font-size:11px'>last change: {html.escape(what)} &rarr; {effect}</span>"
