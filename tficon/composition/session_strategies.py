"""What the strategies (docs/strategies.md) need of a Session beyond TF-ICON's phases: TIGIC's inversions with prompts
instead of the exceptional one, PrimeComposer's kept inversion trajectories, the prompt as each strategy encodes it,
the preset a Session follows, and the attention-derived mask proposal. A mixin of
``tficon.composition.session.Session`` (it uses the Session's encodings, engine, settings and counters), kept apart
so that the Session module holds TF-ICON's phases and this one the strategies' variants of them."""

from __future__ import annotations

import time

import torch

from tficon.composition.inversion_record import invert_keeping_records, kept_inversions
from tficon.composition.tigic_latents import prompted_inversions
from tficon.core.presets import preset_of
from tficon.core.primecomposer import released_prompt
from tficon.core.prompt_markers import plain_prompt

__all__ = ["SessionStrategies"]


class SessionStrategies:
    """The strategies' inversion variants, prompt encoding, preset and mask proposal (mixed into ``Session``)."""

    def _prompted_inversions(self) -> tuple[torch.Tensor, torch.Tensor]:
        # strategy "tigic": the collage inverted with '' and the reference with the prompt (tigic_latents)
        (z_collage, z_ref, _), started, ids = self._encode(), time.perf_counter(), self.time_ids
        with self._threads():
            inverted, cached, evals = prompted_inversions(
                self.engine, z_collage, z_ref, self.steps, self._config.order, progress=self.progress,
                empty=self.model.unconditional_embedding(), prompt=self.model.encode_prompt(self._encoded_text()),
                time_ids=None if ids is None else [ids["background"], ids["reference"]],
            )  # fmt: skip
        self.stats["unet_calls"] += self.steps * sum(not hit for hit in cached)
        self.stats["sample_evals"] += evals
        self.timings["invert"], self.timings["invert_cached"] = time.perf_counter() - started, cached
        return inverted

    def inversion_records(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Both inversions with their records kept (``tficon.composition.inversion_record``): per image, S + 1 latents
        in sampling order, entry 0 = x_T. What strategy "primecomposer" reads back at every step; computed once."""
        if self._kept_records is None:
            z_bg, z_ref, _ = self._encode()
            started = time.perf_counter()
            ids = self.time_ids
            with torch.no_grad(), self._threads():
                records, evals = invert_keeping_records(
                    self.engine, [z_bg, z_ref], self.steps, self._config.order,
                    time_ids=None if ids is None else [ids["background"], ids["reference"]],
                    names=("cut-and-paste" if self._config.mode == "same" else "background", "reference"),
                )  # fmt: skip
            self.stats["unet_calls"] += self.steps if evals else 0
            self.stats["sample_evals"] += evals
            self._kept_records = tuple(records)
            self.timings["invert"] = time.perf_counter() - started
            self.timings["invert_cached"] = (evals == 0, evals == 0)
        return self._kept_records

    def _encoded_text(self) -> str:
        # The prompt without its "<ref>" markers (tficon.core.prompt_markers); strategy "primecomposer" strips them
        # exactly as its released code does (every " <ref>", leading space included).
        if self._config.strategy == "primecomposer":
            return released_prompt(self._prompt)
        return plain_prompt(self._prompt)

    def _kept_inversions(self):
        inputs = self.inputs
        records, scale = self.inversion_records(), self.model.vae_scale_factor
        return kept_inversions(records, inputs.placement, inputs.object_mask, scale)

    def summary(self) -> dict:
        """``SessionViews.summary`` plus ``preset``: the preset these settings follow (``tficon.core.presets.preset_of``;
        None when they follow none), so batch and sweep records name it."""
        return {**super().summary(), "preset": preset_of(self._config)}

    def propose_mask(self, words: str | None = None, *, steps=None, threshold: float = 0.5, max_factor: int = 1):
        """A bool (H, W) object mask at the working size from the generation's cross-attention to the object's
        words, to pass back as ``mask_or_box`` (``tficon.composition.mask_proposal.propose_object_mask``)."""
        from tficon.composition.mask_proposal import propose_object_mask

        return propose_object_mask(self, words, steps=steps, threshold=threshold, max_factor=max_factor)
