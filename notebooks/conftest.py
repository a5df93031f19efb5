"""Settings for running the notebooks under pytest (nbval); none of this is in the notebooks themselves.

The kernels nbval starts inherit this process's environment. On a small shared machine (CI, 2 cores) one torch
thread per notebook is much faster than torch's default of one per core, so ``TFICON_TEST_THREADS`` (default 1,
as in tests/conftest.py) reaches them as ``OMP_NUM_THREADS``, which torch reads when it starts. A user's own
``OMP_NUM_THREADS`` wins.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("TFICON_TEST_THREADS", "1"))
