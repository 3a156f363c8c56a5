"""Deal a dataset's samples to agents: an agent mix, a label-skew scheme and a held-out split.

Agents are numbered by their position on the graph. Each agent gets a disjoint shard of
samples, split into its train part and its own held-out test part; the union of all test
parts is the global test set. With `partition.val_fraction`, a validation part is taken out of
the train part (the test part stays as it was). Everything is a pure function of the seed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from parse_dfl.config import Config
from parse_dfl.data.base import MultimodalDataset
from parse_dfl.errors import UserError


@dataclass
class AgentSpec:
    """What one agent is: its modalities (in dataset order), encoder width and sample indices
    (train, test and, with `partition.val_fraction`, validation: disjoint)."""

    id: int
    modalities: tuple[str, ...]
    width: int
    train_idx: np.ndarray
    test_idx: np.ndarray
    val_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # partition.select_fraction: the agent's own held-out samples for choices made in training
    select_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def type(self) -> str:
        """The agent type, e.g. 'acc+gyro' (modalities in config order)."""
        return "+".join(self.modalities)


def parse_mix(mix: dict[str, int], modalities: list[str]) -> list[tuple[tuple[str, ...], int]]:
    """Mix keys -> (modality set in dataset order, count); refuses modalities the data lacks."""
    out: list[tuple[tuple[str, ...], int]] = []
    seen: set[tuple[str, ...]] = set()
    for key, count in mix.items():
        mods = [m.strip() for m in key.split("+")]
        unknown = [m for m in mods if m not in modalities]
        if unknown:
            raise UserError(
                "agents.mix",
                f"'{key}' names modality '{unknown[0]}', which the data does not have "
                f"(data.modalities: {', '.join(modalities)})",
            )
        ordered = tuple(m for m in modalities if m in mods)
        if ordered in seen:
            raise UserError("agents.mix", f"modality set '{key}' appears twice")
        seen.add(ordered)
        if count > 0:
            out.append((ordered, count))
    return out


def _types_in_order(kinds: list[tuple[tuple[str, ...], int]], how: str, rng: np.random.Generator):
    """The modality set of each graph position, by placement rule."""
    types = [mods for mods, count in kinds for _ in range(count)]
    if how == "shuffled":
        return [types[i] for i in rng.permutation(len(types))]
    if how == "interleaved":
        queues = [[mods] * count for mods, count in kinds]
        order: list[tuple[str, ...]] = []
        while any(queues):
            for q in queues:
                if q:
                    order.append(q.pop())
        return order
    return types


def _shards_iid(pool: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(pool), n))


def _shards_dirichlet(
    pool: np.ndarray, labels: np.ndarray, n: int, alpha: float, need: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, split its samples among agents by Dirichlet(alpha) proportions (retry if tiny)."""
    for _ in range(100):
        shards: list[list[int]] = [[] for _ in range(n)]
        for c in np.unique(labels[pool]):
            idx = rng.permutation(pool[labels[pool] == c])
            cuts = (np.cumsum(rng.dirichlet(np.full(n, alpha))) * len(idx)).astype(int)[:-1]
            for a, part in enumerate(np.split(idx, cuts)):
                shards[a].extend(part.tolist())
        if min(len(s) for s in shards) >= need:
            return [rng.permutation(np.array(s, dtype=np.int64)) for s in shards]
    raise UserError(
        "partition.alpha",
        f"Dirichlet({alpha}) left an agent with fewer than {need} samples in 100 draws; "
        "raise alpha, use fewer agents, or lower partition.min_train",
    )


def _shards_group(
    pool: np.ndarray, groups: np.ndarray, n: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Natural split: each group (subject) goes to agents; with more agents than groups, a
    group's samples are divided among the agents assigned to it."""
    names = np.unique(groups[pool])
    shards: list[list[int]] = [[] for _ in range(n)]
    order = rng.permutation(len(names))
    if n >= len(names):
        owners: dict[int, list[int]] = {g: [] for g in range(len(names))}
        for a in range(n):
            owners[int(order[a % len(names)])].append(a)
        for g, agents in owners.items():
            idx = rng.permutation(pool[groups[pool] == names[g]])
            for a, part in zip(agents, np.array_split(idx, len(agents)), strict=True):
                shards[a].extend(part.tolist())
    else:
        for k, g in enumerate(order):
            shards[k % n].extend(pool[groups[pool] == names[g]].tolist())
    return [rng.permutation(np.array(s, dtype=np.int64)) for s in shards]


def _class_sets(
    n: int, n_classes: int, k: int, mode: str, rng: np.random.Generator
) -> list[list[int]]:
    """The k classes (positions in the sorted class list) each agent holds, as
    flwr-datasets' PathologicalPartitioner assigns them."""
    held: list[list[int]] = []
    for a in range(n):
        if mode == "deterministic":
            held.append([(a + i) % n_classes for i in range(k)])
        elif mode == "first-deterministic":
            first = a % n_classes
            others = np.array([c for c in range(n_classes) if c != first])
            held.append([first, *rng.choice(others, size=k - 1, replace=False).tolist()])
        else:
            held.append(rng.choice(n_classes, size=k, replace=False).tolist())
    return held


def _shards_pathological(
    pool: np.ndarray, labels: np.ndarray, n: int, k: int, mode: str, rng: np.random.Generator
) -> list[np.ndarray]:
    """Every agent gets samples of exactly k classes (flwr-datasets' PathologicalPartitioner,
    after Li et al. 2021): classes are assigned to agents first, then each class's samples,
    shuffled (flwr keeps dataset order, which here would follow subjects), are split evenly
    among the agents holding it. A class no agent holds is left out, with a warning."""
    classes = np.unique(labels[pool])
    if k > len(classes):
        raise UserError(
            "partition.classes_per_agent",
            f"{k} classes per agent, but the data has only {len(classes)} classes",
        )
    held = _class_sets(n, len(classes), k, mode, rng)
    shards: list[list[int]] = [[] for _ in range(n)]
    unused: list[int] = []
    for c, label in enumerate(classes):
        holders = [a for a in range(n) if c in held[a]]
        if not holders:
            unused.append(int(label))
            continue
        idx = rng.permutation(pool[labels[pool] == label])
        if len(holders) > len(idx):
            raise UserError(
                "partition.classes_per_agent",
                f"class {label} has {len(idx)} samples but {len(holders)} agents hold it; use "
                "fewer agents or classes per agent, or class_assignment=deterministic",
            )
        for a, part in zip(holders, np.array_split(idx, len(holders)), strict=True):
            shards[a].extend(part.tolist())
    if unused:
        warnings.warn(
            f"partition: no agent holds class(es) {unused} (class_assignment={mode}); their "
            "samples are not used",
            RuntimeWarning,
            stacklevel=3,
        )
    return [rng.permutation(np.array(s, dtype=np.int64)) for s in shards]


def _shards_shard(
    pool: np.ndarray,
    labels: np.ndarray,
    n: int,
    size: int | None,
    per_agent: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """flwr-datasets' ShardPartitioner (McMahan et al. 2017): the samples sorted by label
    (stable: ties keep dataset order) are cut into consecutive shards of `size`, and each
    agent gets `per_agent` shards drawn at random without replacement; a shard may straddle
    two classes, and samples in no drawn shard are left out."""
    order = pool[np.argsort(labels[pool], kind="stable")]
    where = "partition.shard_size" if size is not None else "partition.shards_per_agent"
    if size is None:
        size = len(order) // (n * per_agent)
        if size == 0:
            raise UserError(
                where,
                f"{n} agents x {per_agent} shards need more than the {len(order)} samples "
                "there are (less than one sample per shard)",
            )
    usable = len(order) // size
    if n * per_agent > usable:
        raise UserError(
            where,
            f"{n} agents x {per_agent} shards of {size} samples need {n * per_agent * size} "
            f"samples, but there are {len(order)}",
        )
    picks = rng.permutation(usable)[: n * per_agent].reshape(n, per_agent)
    return [
        rng.permutation(np.concatenate([order[s * size : (s + 1) * size] for s in row]))
        for row in picks
    ]


def partition(ds: MultimodalDataset, cfg: Config) -> list[AgentSpec]:
    """One AgentSpec per agent, in graph order, with disjoint train/test shards."""
    modalities = list(ds.modalities)
    kinds = parse_mix(cfg.agents.mix, modalities)
    n = sum(count for _, count in kinds)
    if n == 0:
        raise UserError("agents.mix", "the agent mix has no agents")
    rng = np.random.default_rng([cfg.seed, 1])
    pc = cfg.partition
    need = pc.min_train + 1
    pool = np.arange(ds.n_samples)
    if pc.samples_per_agent is not None and pc.samples_per_agent * n > ds.n_samples:
        raise UserError(
            "agents.mix",
            f"{n} agents x {pc.samples_per_agent} samples per agent need "
            f"{pc.samples_per_agent * n} samples, but '{ds.name}' has {ds.n_samples}",
        )
    if n * need > ds.n_samples:
        raise UserError(
            "agents.mix",
            f"{n} agents need at least {n * need} samples ({pc.min_train} train + 1 test each), "
            f"but '{ds.name}' has {ds.n_samples}",
        )
    if pc.name == "iid":
        shards = _shards_iid(pool, n, rng)
    elif pc.name == "dirichlet":
        shards = _shards_dirichlet(pool, ds.labels, n, pc.alpha, need, rng)
    elif pc.name == "pathological":
        shards = _shards_pathological(
            pool, ds.labels, n, pc.classes_per_agent, pc.class_assignment, rng
        )
    elif pc.name == "shard":
        shards = _shards_shard(pool, ds.labels, n, pc.shard_size, pc.shards_per_agent, rng)
    else:
        if ds.groups is None:
            raise UserError(
                "partition.name", f"'group' needs a dataset with groups; '{ds.name}' has none"
            )
        shards = _shards_group(pool, ds.groups, n, rng)
    if pc.samples_per_agent is not None:
        shards = [s[: pc.samples_per_agent] for s in shards]

    types = _types_in_order(kinds, cfg.agents.placement, rng)
    agents: list[AgentSpec] = []
    for a, (mods, shard) in enumerate(zip(types, shards, strict=True)):
        n_test = max(1, int(round(pc.test_fraction * len(shard))))
        if len(shard) - n_test < pc.min_train:
            raise UserError(
                "agents.mix",
                f"agent {a} gets only {len(shard)} samples under partition '{pc.name}', fewer "
                f"than {need}; use fewer agents, another partition, or lower partition.min_train",
            )
        train, val = _hold_out(shard[n_test:], ds.labels, cfg, a, "val_fraction")
        train, select = _hold_out(train, ds.labels, cfg, a, "select_fraction")
        type_key = "+".join(mods)
        width = cfg.agents.width_by_agent.get(
            a, cfg.agents.width_by_type.get(type_key, cfg.agents.width)
        )
        agents.append(
            AgentSpec(
                id=a,
                modalities=mods,
                width=width,
                train_idx=train,
                test_idx=np.sort(shard[:n_test]),
                val_idx=val,
                select_idx=select,
            )
        )
    for key in cfg.agents.width_by_type:
        if key not in {"+".join(m) for m, _ in kinds}:
            raise UserError("agents.width_by_type", f"'{key}' is not an agent type of the mix")
    for a in cfg.agents.width_by_agent:
        if not 0 <= a < n:
            raise UserError("agents.width_by_agent", f"agent {a} does not exist (0..{n - 1})")
    return agents


HOLD_OUT_STREAM = {"val_fraction": 0x7A1, "select_fraction": 0x5E1}


def _hold_out(
    train: np.ndarray, labels: np.ndarray, cfg: Config, agent: int, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """(train, held out) of one agent, sorted: `partition.<key>` of its training samples (at
    least one), class-stratified and seeded per agent and key. Its own random stream, so a
    fraction of 0 leaves every split as it was and the test split never depends on it."""
    from parse_dfl.evaluation import stratified_subsample

    fraction = getattr(cfg.partition, key)
    if fraction <= 0:
        return np.sort(train), np.zeros(0, dtype=np.int64)
    n_out = max(1, int(round(fraction * len(train))))
    if len(train) - n_out < cfg.partition.min_train:
        raise UserError(
            f"partition.{key}",
            f"agent {agent} keeps only {len(train) - n_out} training samples after holding out "
            f"{n_out}, fewer than partition.min_train={cfg.partition.min_train}",
        )
    seed = int(np.random.SeedSequence([cfg.seed, HOLD_OUT_STREAM[key], agent]).generate_state(1)[0])
    out = stratified_subsample(np.sort(train), labels, n_out, seed)
    return np.setdiff1d(train, out), out


def global_test_indices(agents: list[AgentSpec]) -> np.ndarray:
    """The global test set: the union of every agent's held-out samples."""
    return np.sort(np.concatenate([a.test_idx for a in agents]))
