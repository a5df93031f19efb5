import os

import torch

# Tiny models gain nothing from a second thread, and on a busy 2-core machine it costs several times. Denormals slow CPU convolutions badly.
torch.set_num_threads(int(os.environ.get("TFICON_TEST_THREADS", "1")))
torch.set_flush_denormal(True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def model():
    """The tiny random SD 2.x-shaped model (one per test module, so inversion caches never cross modules)."""
    from tficon.model.tiny import tiny_model

    return tiny_model("sd2")


@pytest.fixture(scope="module")
def sample():
    """The demo's cross-domain sample at the tiny models' working size."""
    from tiny_setup import SIZE

    from tficon.toy.samples import toy_sample

    return toy_sample(image_size=SIZE)
