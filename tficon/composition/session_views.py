"""What a Session lets you look at: each branch's latents, x0 estimates and previews per step, the attention maps of
a step recomputed on request, and a JSON summary. A mixin of ``tficon.composition.session.Session``, kept apart so
that the Session module holds the phases and this one the read-only views over their records."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import torch

from tficon.composition.attention import CaptureRequest
from tficon.composition.engine import StepRecord, Track
from tficon.core import checks

BRANCHES = ("generation", "background", "reference")


class SessionViews:
    """Read-only views of a Session's records (mixed into ``Session``; uses its ``_records``, ``_compute_step``,
    ``engine``, ``inputs``, ``model`` and settings)."""

    def capture_attention(
        self,
        step: int,
        *,
        kinds: Iterable[str] = ("composite", "background", "reference", "pseudo_cross", "generation"),
        layers: Iterable[str] | None = None,
        max_tokens: int = 1024,
        max_bytes: int = 256 * 2**20,
    ) -> dict[tuple[str, str], torch.Tensor]:
        """Attention maps of step ``step``'s UNet call, recomputed from the record before it.

        Returns {(layer, kind): (Nq, Nk) float32} averaged over heads and pooled to at most
        ``max_tokens`` positions per side, at most ``max_bytes`` in all (later maps past the budget are
        left out, with a warning). The Session's records are not changed.
        """
        if not 0 <= step < self.steps:
            raise ValueError(f"steps with a UNet call are 0..{self.steps - 1}, got {step}")
        if step > len(self._records):
            raise ValueError(f"step {step} is not reachable yet: run(until={step}) first")
        checks.check_names(layers, self.attention_layers, name="layers")
        request = CaptureRequest(tuple(kinds), None if layers is None else frozenset(layers), max_tokens, max_bytes)
        record = self._compute_step(step, capture=request)  # inspection: not counted as composition work
        return record.attention

    @property
    def attention_layers(self) -> list[str]:
        """Names of the self-attention layers, in execution order."""
        return list(self.engine.attention_layers)

    def latents(self, step: int | None = None) -> dict[str, torch.Tensor]:
        """Latents of the active branches after ``step`` (default: the last completed step)."""
        record = self._record(step)
        out = {"generation": record.generation.x}
        for name in ("background", "reference"):
            track: Track = getattr(record, name)
            if track.index == record.s:
                out[name] = track.x
        return out

    def x0(self, step: int | None = None) -> dict[str, torch.Tensor]:
        """Each branch's data prediction (x0 estimate, a latent) at ``step``; the final latent at step S."""
        record = self._record(step)
        out = {}
        for name in BRANCHES:
            track: Track = getattr(record, name)
            if track.index == record.s and track.evaluated:
                out[name] = track.state.d_hist[-1]
        if record.s == self.steps:
            out["generation"] = record.generation.x
        return out

    def preview(self, step: int | None = None) -> dict[str, torch.Tensor]:
        """Cheap RGB previews (3, h, w) in [0, 1] of each branch's x0 estimate at ``step``, through the
        model's fitted linear latent-to-RGB map (``tficon.composition.preview``); use ``decode`` for full images."""
        from tficon.composition.preview import fit_latent_rgb_map, latent_to_rgb

        if self._preview_map is None:
            inputs = self.inputs
            self._preview_map = fit_latent_rgb_map(
                self.model, torch.stack([inputs.background, inputs.cut_and_paste, inputs.reference])
            )
        return {name: latent_to_rgb(x0, self._preview_map) for name, x0 in self.x0(step).items()}

    def _record(self, step: int | None) -> StepRecord:
        if not self._records:
            raise RuntimeError("no step has run yet: call step() or run() first")
        index = len(self._records) - 1 if step is None else step
        if not 0 <= index < len(self._records):
            raise ValueError(f"completed steps are 0..{len(self._records) - 1}, got {step}")
        return self._records[index]


    def summary(self) -> dict[str, Any]:
        """Settings, placement, timings and evaluation counts, JSON-serialisable."""
        place = self.placement
        return {
            "config": dataclasses.asdict(self._config),
            "guidance": self._config.effective_guidance,
            "prompt": self._prompt,
            "model": getattr(self.model, "spec", None),
            "image_size": list(self.image_size),
            "placement": {
                "f_row": place.f_row,
                "f_col": place.f_col,
                "scale": place.scale,
                "latent_target_box": dataclasses.astuple(place.latent_target_box),
            },
            "timings": {k: v for k, v in self.timings.items() if isinstance(v, float)},
            "step_seconds": sum(r.seconds for r in self._records),
            "unet_calls": self.stats["unet_calls"],
            "sample_evals": self.stats["sample_evals"],
        }
