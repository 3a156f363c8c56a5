"""Mini-batch order, defined once so every engine draws exactly the same batches.

Each round, every agent walks through a fresh random permutation of its training samples,
`batch_size` at a time, wrapping around. The permutations for all agents come from one
generator seeded by (seed, round), drawn as one tensor, so a vectorised engine can
reproduce them with a single indexing step.
"""

from __future__ import annotations

import numpy as np
import torch


class BatchSampler:
    def __init__(self, train_sizes: list[int], batch_size: int, steps: int, seed: int) -> None:
        self.sizes = torch.tensor(train_sizes, dtype=torch.long)
        self.batch_size = batch_size
        self.steps = steps
        self.seed = seed

    def round(self, round_: int) -> torch.Tensor:
        """Positions into each agent's train indices: (n_agents, steps, batch_size)."""
        seed = int(np.random.SeedSequence([self.seed, round_, 7]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        n_max = int(self.sizes.max())
        keys = torch.rand(len(self.sizes), n_max, generator=gen)
        keys[torch.arange(n_max)[None, :] >= self.sizes[:, None]] = 2.0  # past the end: last
        perm = keys.argsort(dim=1)
        pos = torch.arange(self.steps * self.batch_size).view(1, -1) % self.sizes[:, None]
        return perm.gather(1, pos).view(len(self.sizes), self.steps, self.batch_size)
