import os

import torch

# CI runs pytest -n 2 on 2 cores: one intra-op thread per worker avoids oversubscription,
# which made conv-heavy tests 4-6x slower.
torch.set_num_threads(int(os.environ.get("GAN_REFINE_TEST_THREADS", "1")))
