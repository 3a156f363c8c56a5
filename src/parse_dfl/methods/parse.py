"""PARSE: feature fission + slice-level partial alignment.

Loss:  CE(ensemble, y) + lambda_h * sum_heads CE(head, y) + beta * L_align
Share plan (who averages which block):
    enc.m, head.unique.m   agents holding modality m
    head.redundant         every agent | agents sharing a modality | same type | nobody
    synergy                agents of the same (multimodal) type
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from parse_dfl.data.partition import AgentSpec
from parse_dfl.methods.alignment import info_nce, separation
from parse_dfl.methods.base import Method, Share, SharePlan
from parse_dfl.models.parse import ParseModel, ParseOutput


class ParseMethod(Method):
    name = "parse"
    description = "PARSE: fission into unique/redundant/synergistic slices, partial alignment"

    def build_model(self, agent: AgentSpec) -> nn.Module:
        mc = self.cfg.model
        return ParseModel(
            agent.modalities,
            self.kinds,
            self.input_shapes,
            agent.width,
            mc.split,
            self.n_classes,
            fusion=mc.fusion,
            head_hidden=mc.head_hidden,
            ensemble=mc.ensemble,
            encoder=mc.encoder,
        )

    def alignment(self, out: ParseOutput) -> torch.Tensor:
        mods = list(out.redundant)
        if len(mods) == 1:
            m = mods[0]
            return separation(out.redundant[m], out.unique[m])
        terms = []
        for a, b in combinations(mods, 2):
            hard = [out.unique[a], out.unique[b], out.synergy[a], out.synergy[b]]
            terms.append(info_nce(out.redundant[a], out.redundant[b], hard, self.cfg.method.tau))
        return torch.stack(terms).mean()

    def loss(self, model: nn.Module, x: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return self.objective(model(x), y)

    def objective(self, out: ParseOutput, y: torch.Tensor) -> torch.Tensor:
        """CE(ensemble) + lambda_h * sum of the heads' CE + beta * alignment."""
        mc = self.cfg.method
        if self.cfg.model.ensemble == "probs":
            total = F.nll_loss(out.ensemble, y)
        else:
            total = F.cross_entropy(out.ensemble, y)
        if mc.lambda_h > 0:
            total = total + mc.lambda_h * self.head_loss(out, y)
        if mc.align and mc.beta > 0:
            total = total + mc.beta * self.alignment(out)
        return total

    def head_loss(self, out: ParseOutput, y: torch.Tensor) -> torch.Tensor:
        """Sum of the heads' own cross-entropies: each head is trained to predict y alone."""
        losses = [F.cross_entropy(h, y) for h in out.heads.values()]
        return sum(losses[1:], losses[0])

    def logits(self, model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(x).ensemble

    def share_plan(self, agent: AgentSpec, model: nn.Module) -> SharePlan:
        mc = self.cfg.method
        plan: SharePlan = {}
        for m in agent.modalities:
            plan[f"enc.{m}"] = Share()
            plan[f"head.unique.{m}"] = Share() if mc.share_unique_heads else None
        scope = mc.redundant_head_scope
        plan["head.redundant"] = {
            "all": Share(),
            "modality": Share(tags=frozenset(agent.modalities)),
            "type": Share(group=agent.type),
            "none": None,
        }[scope]
        if len(agent.modalities) >= 2:
            plan["synergy"] = Share(group=agent.type) if mc.share_synergy else None
        return plan
