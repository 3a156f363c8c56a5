"""Evaluation on a batched engine: vmap of `method.logits` over a chunk of agents and a
chunk of test samples, or the agents' own modules where that measures faster."""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from parse_dfl.engines.cohort import Cohort
from parse_dfl.engines.setup import Setup
from parse_dfl.evaluation import accuracy


class CohortEvaluation:
    """The evaluation half of the batched engine (mixed into BatchedEngine)."""

    setup: Setup
    cohorts: list[Cohort]
    models: list[nn.Module]
    test_len: torch.Tensor
    test_table: torch.Tensor
    force_fallback: bool = False
    eval_bytes: int = 256 << 20  # activations of one vmapped evaluation call (agents x samples)
    eval_chunk: int = 4096  # test samples per evaluation call (the reference's chunk)

    def _rng_untouched(self) -> Any:
        raise NotImplementedError  # BatchedEngine's

    def _logits_vmapped(self, c: Cohort, rows: slice, x: dict, shared: bool) -> torch.Tensor:
        """Scores of cohort rows `rows`: on samples all of them see (`shared`: the global
        protocol, `method.logits`) or on each one's own samples (x with a leading agent axis:
        the local protocol, `method.local_logits`)."""
        params = {f"model.{n}": c.P[n][rows] for n in c.names}
        params |= {f"model.{n}": b[rows] for n, b in c.B.items()}
        call = c.logits_fn if shared else c.local_logits_fn

        def logits_of(p: dict, xx: dict) -> torch.Tensor:
            assert call is not None
            return functional_call(call, p, (xx,))

        fn = vmap(logits_of, in_dims=(0, None if shared else 0), randomness="error")
        return fn(params, x)

    def _probe_eval(self, c: Cohort) -> None:
        s = self.setup
        if self.force_fallback or c.mode == "fallback":
            c.eval_mode = "fallback"
            return
        part = s.global_test[: min(64, len(s.global_test))]
        x = {m: s.x[m][part] for m in c.modalities}
        k = min(2, c.n)
        own_x = {m: v.unsqueeze(0).expand(k, *v.shape) for m, v in x.items()}
        try:
            c.template.eval()
            with torch.no_grad(), self._rng_untouched():
                got = self._logits_vmapped(c, slice(0, k), x, shared=True)
                got_local = self._logits_vmapped(c, slice(0, k), own_x, shared=False)
        except Exception as e:  # noqa: BLE001
            c.eval_mode = "fallback"
            warnings.warn(
                f"batched engine: evaluation of agents {c.ids[:3]} runs per agent: vmap failed "
                f"({type(e).__name__}: {e})",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        finally:
            c.template.train()
        for r in range(k):
            model = self.models[c.ids[r]]
            model.eval()
            with torch.no_grad(), self._rng_untouched():
                want = s.method.logits(model, x)
                want_local = s.method.local_logits(model, x)
            model.train()
            if not (
                torch.allclose(got[r], want, rtol=1e-4, atol=1e-4)
                and torch.allclose(got_local[r], want_local, rtol=1e-4, atol=1e-4)
            ):
                c.eval_mode = "fallback"
                warnings.warn(
                    f"batched engine: evaluation of agents {c.ids[:3]} runs per agent: vmapped "
                    "logits differ from the agent's own",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return
        c.eval_mode = "batched" if self._vmap_evaluates_faster(c) else "per-agent"

    def _vmap_evaluates_faster(self, c: Cohort) -> bool:
        """Forward only, a model's own large-batch kernels can beat their vmapped forms
        (a grouped convolution runs at about half the rate of a plain one on the CPU): time
        both on a slice of the global test set and keep the faster (the results agree)."""
        s = self.setup
        part = s.global_test[: min(self.eval_chunk, 256, len(s.global_test))]
        x = {m: s.x[m][part] for m in c.modalities}
        k = min(4, c.n)
        models = [self.models[a] for a in c.ids[:k]]

        def vmapped() -> None:
            self._logits_vmapped(c, slice(0, k), x, shared=True)

        def per_agent() -> None:
            for model in models:
                s.method.logits(model, x)

        best = {}
        c.template.eval()
        for model in models:
            model.eval()
        try:
            with torch.no_grad(), self._rng_untouched():
                for name, fn in (("vmap", vmapped), ("loop", per_agent)):
                    fn()  # warm-up
                    t = time.perf_counter()
                    fn()
                    best[name] = time.perf_counter() - t
        finally:
            c.template.train()
            for model in models:
                model.train()
        return best["vmap"] <= 1.1 * best["loop"]

    @torch.no_grad()
    def _correct(self, c: Cohort, shared: bool) -> torch.Tensor:
        """Correct predictions of every agent of the cohort on the global (shared) test set
        or on its own test set. A call takes up to `eval_chunk` samples (large products,
        as the reference's 4096) and as many agents as `eval_bytes` of activations allow."""
        s = self.setup
        correct = torch.zeros(c.n, dtype=torch.long, device=s.device)
        width = len(s.global_test) if shared else int(self.test_len[c.ids_t].max())
        step = max(1, min(width, self.eval_chunk))
        chunk = int(max(1, min(c.n, self.eval_bytes // (c.sample_bytes * step))))
        c.template.eval()
        try:
            for lo in range(0, c.n, chunk):
                rows = slice(lo, min(c.n, lo + chunk))
                if shared:
                    idx_all = s.global_test
                    for a in range(0, len(idx_all), step):
                        part = idx_all[a : a + step]
                        x = {m: s.x[m][part] for m in c.modalities}
                        pred = self._logits_vmapped(c, rows, x, shared=True).argmax(dim=-1)
                        correct[rows] += (pred == s.y[part]).sum(dim=1)
                else:
                    ids = c.ids_t[rows]
                    lens = self.test_len[ids]
                    for a in range(0, int(lens.max()), step):
                        cols = torch.arange(a, min(int(lens.max()), a + step), device=s.device)
                        part = self.test_table[ids][:, cols]
                        valid = cols[None, :] < lens[:, None]
                        x = {m: s.x[m][part] for m in c.modalities}
                        pred = self._logits_vmapped(c, rows, x, shared=False).argmax(dim=-1)
                        correct[rows] += ((pred == s.y[part]) & valid).sum(dim=1)
        finally:
            c.template.train()
        return correct

    def evaluation_sets_changed(self) -> None:
        """The local protocol's padded index table follows `setup.test_idx` (the engine's
        validation evaluation swaps the validation splits in, then the test splits back)."""
        s = self.setup
        sizes = [len(t) for t in s.test_idx]
        self.test_len = torch.tensor(sizes, dtype=torch.long, device=s.device)
        self.test_table = torch.zeros((len(sizes), max(sizes)), dtype=torch.long, device=s.device)
        for a, idx in enumerate(s.test_idx):
            self.test_table[a, : len(idx)] = idx

    def evaluate(self) -> tuple[list[float], list[float]]:
        s = self.setup
        n = len(s.agents)
        glob, loc = [0.0] * n, [0.0] * n
        n_global = max(1, len(s.global_test))
        for c in self.cohorts:
            if c.eval_mode == "unprobed":
                self._probe_eval(c)
            if c.eval_mode in ("fallback", "per-agent"):
                for a in c.ids:
                    agent = s.agents[a]
                    model = self.models[a]
                    glob[a] = accuracy(s.method, model, agent.modalities, s.x, s.y, s.global_test)
                    loc[a] = accuracy(
                        s.method, model, agent.modalities, s.x, s.y, s.test_idx[a], local=True
                    )
                continue
            g = self._correct(c, shared=True).tolist()
            lo = self._correct(c, shared=False).tolist()
            for r, a in enumerate(c.ids):
                glob[a] = g[r] / n_global
                loc[a] = lo[r] / max(1, len(s.test_idx[a]))
        return glob, loc
