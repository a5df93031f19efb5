"""Model families: what differs between Stable Diffusion 1.x/2.x, SDXL, SD3 and the toy model, in one place per family.

A :class:`Family` says how its models turn a prompt (and TF-ICON's exceptional prompt) into the UNet's
conditioning, what extra conditioning each branch carries (SDXL's added time ids), how the denoiser is called with
it, how conditionings of several rows are concatenated and hashed, and which attention layers exist. Everything
above the model layer (the engine, the Session, the runners) asks the model's family (:func:`family_for`) instead of
testing what kind of model it has.

Adding a family is one new module plus a registration: subclass :class:`Family` (``base.py``) (the SD family in
``tficon/model/families/sd.py`` is the smallest example), list the ``LoadedModel.family`` names it drives in
``names`` and call :func:`register` on it (as a class decorator, or at run time). The families registered last are
asked first, so a new family may also take over names an older one drove (tests do this). Built in:

- ``sd.py``: Stable Diffusion 1.x and 2.x (epsilon and v-prediction), ``sd1``/``sd2`` and the tiny ``tiny-sd1``/
  ``tiny-sd2``: one CLIP text encoder, conditioning a ``(B, 77, D)`` tensor;
- ``sdxl.py``: SDXL base and ``tiny-sdxl``: two text encoders, a ``tficon.model.text.Conditioning`` with the
  pooled embedding and six added time ids, passed to the UNet as ``added_cond_kwargs``;
- ``sd3.py``: Stable Diffusion 3 / 3.5 and ``tiny-sd3``: an MM-DiT transformer on a rectified flow, two CLIP
  encoders and an optional T5, a ``Conditioning`` with both pooled embeddings; the composite goes into its joint
  attention (``tficon.composition.joint_attention``);
- ``toy.py``: the embedded toy model, SD-shaped, trained on a closed vocabulary.

Telling which family a model folder or checkpoint holds (its configs) is ``tficon.model.identify``'s job; a family
starts at a ``LoadedModel``.
"""

# The built-in families register themselves on import.
from tficon.model.families import sd, sd3, sdxl, toy  # noqa: E402,F401  (after the registry they register into)
from tficon.model.families.base import Family, conditioning_digest, family_for, family_names, register, unregister

__all__ = ["Family", "conditioning_digest", "family_for", "family_names", "register", "unregister"]
