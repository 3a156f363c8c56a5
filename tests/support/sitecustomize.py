"""Loaded by Python at start-up when this folder is on PYTHONPATH (tests only): process 1 of
a distributed job sends one value too many in every gossip message, as a process running
other code or another config would. The receivers must drop those messages, not crash."""

import os

if os.environ.get("PARSE_DFL_TEST_BAD_SIZE") and os.environ.get("RANK") == "1":
    import torch

    from parse_dfl.engines.distributed import DistributedEngine

    original = DistributedEngine._swap

    def swap(self, plan, outgoing):
        padded = {k: torch.cat([v, v[:1]]) for k, v in outgoing.items()}
        return original(self, plan, padded)

    DistributedEngine._swap = swap
