"""What the ``tficon`` command line says: flag names in library messages, one-line warnings and errors, the
``--help`` layout with defaults and examples, and the timing fields of a run.

Kept apart from ``tficon.cli`` (which parses and runs the commands) so that the wording lives in one place: a
library message names Python arguments (``foreground_mask``, ``tficon.load_model``), a command-line user typed
flags (``--foreground-mask``, ``--model``), and every message the CLI prints goes through ``flag_message``.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import time
import warnings
from contextlib import contextmanager

from tficon.core.config import SETTINGS

# Python names in library messages -> the flags a CLI user typed: first the phrases and arguments that are not
# settings, then every setting whose name has an underscore (longest first: "tau_bg" before "tau_b").
_FLAG_NAMES = {
    "pass clip_box=True to shift it inside (a CompositionConfig field; --clip-box on the command line)":
        "pass --clip-box to shift it inside",
    "tficon.load_model with a hub id or a local folder": "--model with a hub id or a local folder",
    "tficon.load_model": "--model",
    "image_size (--size)": "--size",
    "mask_or_box (the user mask)": "--mask",
    "mask_or_box": "--mask/--box",
    "foreground_mask": "--foreground-mask",
    "image_size": "--size",
    "clip_box=True": "--clip-box",
    "clip=True": "--clip-box",
    **{s.name: s.flag for s in sorted(SETTINGS, key=lambda s: -len(s.name)) if "_" in s.name},
}
# Settings named by a plain word ("steps", "mode"): that word occurs in other senses inside messages ("a fraction
# of the steps"), so it becomes a flag only where it opens a message ("steps must be ..." -> "--steps must be ...").
_CONFIG_FLAGS = {s.name: s.flag for s in SETTINGS if "_" not in s.name}
# Phrases that only make sense inside Python ("Said once per process" is a Python session's concern).
_PYTHON_ONLY = (" Said once per process.",)


def flag_message(message: str) -> str:
    """A library message with its Python argument names replaced by the CLI's flag names."""
    for name, flag in _FLAG_NAMES.items():
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w])", flag, message)
    for name, flag in _CONFIG_FLAGS.items():
        if message.startswith(f"{name} "):
            message = flag + message[len(name) :]
    for phrase in _PYTHON_ONLY:
        message = message.replace(phrase, "")
    return message


def one_line(message: str) -> str:
    """``message`` on a single line (library messages may wrap)."""
    return " ".join(str(message).split())


@contextmanager
def warnings_as_lines(where: str, stream=None):
    """Inside: every Python warning (the library's and its dependencies') is printed as ``<where>: warning:
    <message>`` on one line of stderr, with flag names, instead of Python's ``path:line: UserWarning: ...`` form.
    Python's own filters still decide which warnings show (a warning said once stays said once)."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = one_line(flag_message(str(message)))
        text = text[len(where) + 2 :] if text.startswith(f"{where}: ") else text  # already says where
        print(f"{where}: warning: {text}", file=stream or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


class Timer:
    """Wall time of a command, split into loading the model and the rest (the composition and its outputs).

    ``load_seconds`` is what a second run in the same Python session would not pay; the itemised timings of
    ``Session.summary()`` cover the composition only."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.loaded: float | None = None

    def model_loaded(self) -> None:
        self.loaded = time.perf_counter()

    def fields(self) -> dict[str, float]:
        """``load_seconds``, ``compose_seconds`` (after the load: the composition and preparing its outputs) and
        ``total_seconds`` (their sum: the command's wall time up to writing)."""
        now = time.perf_counter()
        loaded = self.loaded if self.loaded is not None else self.started
        return {
            "load_seconds": loaded - self.started,
            "compose_seconds": now - loaded,
            "total_seconds": now - self.started,
        }


def describe_time(fields: dict) -> str:
    """``12.3 s (model load 6.5 s, composition 5.8 s)`` from ``Timer.fields()``."""
    return (
        f"{fields['total_seconds']:.1f} s (model load {fields['load_seconds']:.1f} s, "
        f"composition {fields['compose_seconds']:.1f} s)"
    )


# ----------------------------------------------------------------------------------------------------------------
# --help and usage errors
# ----------------------------------------------------------------------------------------------------------------

EXAMPLES = {
    "demo": """examples:
  tficon demo                                   # about 2 min on a 2-core CPU, most of it loading torch and the model
  tficon demo --tau-a 0.7 --out out/tau_a.png   # inject the object's attention for more of the steps
  tficon demo --save-inputs out/demo_inputs     # also write the sample's images, to try them with 'tficon compose'""",
    "compose": """examples:
  tficon compose --background bg.png --foreground fg.png --foreground-mask fg_mask.png \\
      --box 36,18,26,26 --prompt "a blue square and a red star, outline style" --out out/result.png
  tficon compose ... --mask mask.png --json out/stats.json       # the target box from a mask drawn on bg.png
  tficon compose ... --model stabilityai/stable-diffusion-2-1-base --mode same --steps 50""",
    "batch": """examples:
  tficon batch path/to/inputs --out runs/inputs --model stabilityai/stable-diffusion-2-1-base
  tficon batch path/to/inputs --out runs/inputs --processes 4   # one process per GPU""",
    "sweep": """examples:
  tficon sweep --demo --grid tau_a=0.2,0.4,0.6 --grid tau_b=0.5,0.7,0.9 --out out/sweep_demo
  tficon sweep --background bg.png --foreground fg.png --foreground-mask fg_mask.png --box 36,18,26,26 \\
      --prompt "a red star, outline style" --grid guidance=1:9:5 --out out/sweep""",
}
ROOT_EXAMPLES = """first steps:
  tficon demo                 compose the built-in sample with the embedded toy model (about 2 min on a 2-core CPU)
  tficon compose --help       your own images"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows every option's default (settings say theirs already)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or action.option_strings == []
            or isinstance(action, (argparse._VersionAction, argparse._HelpAction))
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the command and where the options are listed
    (argparse prints the whole usage block first, which buries the message for a command with 30 options)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} ({self.prog} --help lists the options)\n")


def add_examples_and_version(parser: argparse.ArgumentParser, version: str) -> argparse.ArgumentParser:
    """``--version`` on the top parser and an examples block under each sub-command's ``--help``."""
    parser.add_argument("--version", action="version", version=f"tficon {version}")
    parser.epilog = ROOT_EXAMPLES + (f"\n\n{textwrap.fill(parser.epilog, 100)}" if parser.epilog else "")
    for action in parser._subparsers._group_actions:  # the sub-command parsers, by name
        for name, sub in action.choices.items():
            if name in EXAMPLES:
                sub.epilog = EXAMPLES[name] if not sub.epilog else f"{sub.epilog}\n\n{EXAMPLES[name]}"
    return parser
