"""Suite-wide settings.

pytest runs two workers on a 2-core machine (`make test` uses -n 2); each torch process would
otherwise start one thread per core, and oversubscribed cores make tiny models up to 10x slower.
Subprocesses started by tests inherit OMP_NUM_THREADS.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
