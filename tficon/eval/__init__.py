"""Measuring compositions and inversions: pixel metrics, the author's protocol, LPIPS / CLIP, inversion round trips.

Every name is also in :mod:`tficon.eval.metrics` (the old ``tficon.metrics``).
"""

from tficon.eval.metrics import *  # noqa: F401,F403
from tficon.eval.metrics import __all__  # noqa: F401
