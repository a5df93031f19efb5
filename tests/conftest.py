import os

import torch

# Tiny models gain nothing from a second thread, and on a busy 2-core machine it costs several times. Denormals slow CPU convolutions badly.
torch.set_num_threads(int(os.environ.get("TFICON_TEST_THREADS", "1")))
torch.set_flush_denormal(True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
