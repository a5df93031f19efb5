import os

import torch

# Two cores on CI; more threads only adds contention. Denormals slow CPU convolutions badly.
torch.set_num_threads(int(os.environ.get("TFICON_TEST_THREADS", "2")))
torch.set_flush_denormal(True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
