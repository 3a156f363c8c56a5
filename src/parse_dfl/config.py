"""Typed, validated run configuration.

Every field has a default and a one-line description (`parse-dfl config --help` prints them).
Unknown keys and wrong types are refused with a message that names the field. Loading goes
YAML file -> `--set key=value` overrides -> pydantic validation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from parse_dfl import registry
from parse_dfl.errors import UserError
from parse_dfl.yamlsafe import load_file, loads

DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
"""The device names a config may give (availability is checked when the run is set up)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    name: str = Field("watch", description="data source (see `parse-dfl datasets`)")
    modalities: list[str] | None = Field(
        None, description="modalities to use, in this order; default: the source's default pair"
    )
    setting: str = Field(
        "redundancy",
        description="synthetic-pid: redundancy | uniqueness0 | uniqueness1 | synergy, or a "
        "'+'-joined mix such as redundancy+synergy",
    )
    path: str | None = Field(
        None,
        description="npz: path to the bring-your-own data file; relative to the config file "
        "that names it (--set: to the working directory)",
    )
    layout: Literal["channels-first", "channels-last"] = Field(
        "channels-first",
        description="npz: axis order of 3-D series and 4-D image arrays: channels-first "
        "(N, C, T) / (N, C, H, W) or channels-last (N, T, C) / (N, H, W, C)",
    )
    n_samples: int = Field(4000, ge=10, description="synthetic-pid: number of samples")
    dim: int = Field(32, ge=2, description="synthetic-pid: features per modality")
    n_classes: int = Field(4, ge=2, description="synthetic-pid: classes per label factor")
    noise: float = Field(2.0, ge=0, description="synthetic-pid: std of the observation noise")
    window: int = Field(100, ge=4, description="watch: window length in samples (50 Hz)")
    step: int = Field(50, ge=1, description="watch: hop between window starts")
    standardize: bool = Field(True, description="z-score every feature / channel")

    @classmethod
    def keys_for(cls, source: str) -> list[str]:
        """The data keys that mean something for `source`: the common ones and those whose
        description starts with '<source>:' (why: a report lists only the settings that apply,
        not data.window for an npz file). tests/test_byod.py checks every prefix names a source."""
        keys = []
        for key, info in cls.model_fields.items():
            owner = source_of(info.description or "")
            if owner is None or owner == source:
                keys.append(key)
        return keys


def source_of(description: str) -> str | None:
    """'watch: window length ...' -> 'watch'; a description without a source prefix -> None."""
    head, sep, _ = description.partition(": ")
    return head if sep and re.fullmatch(r"[a-z][a-z0-9-]*", head) else None


class AgentsConfig(Section):
    mix: dict[str, int] = Field(
        default_factory=lambda: {"acc": 10, "gyro": 10, "acc+gyro": 10},
        description="agent mix: modality set -> number of agents, e.g. acc:10,gyro:10,acc+gyro:10",
    )
    width: int = Field(64, ge=1, description="encoder width (hidden channels / units)")
    width_by_type: dict[str, int] = Field(
        default_factory=dict, description="encoder width per agent type, e.g. {acc+gyro: 128}"
    )
    width_by_agent: dict[int, int] = Field(
        default_factory=dict, description="encoder width per agent id (overrides width_by_type)"
    )
    placement: Literal["shuffled", "interleaved", "blocks"] = Field(
        "shuffled",
        description="where agent types sit on the graph: shuffled (seeded), interleaved "
        "(round-robin over types), blocks (all agents of a type next to each other)",
    )

    @field_validator("mix", mode="before")
    @classmethod
    def _parse_mix(cls, v: Any) -> Any:
        if isinstance(v, str):
            out: dict[str, int] = {}
            for part in v.split(","):
                part = part.strip()
                if not part:
                    continue
                if ":" not in part:
                    raise ValueError(f"'{part}' is not modality-set:count (e.g. acc+gyro:10)")
                key, _, count = part.rpartition(":")
                try:
                    out[key.strip()] = int(count)
                except ValueError:
                    raise ValueError(f"count '{count}' of '{key}' is not an integer") from None
            return out
        return v

    @field_validator("mix")
    @classmethod
    def _check_mix(cls, v: dict[str, int]) -> dict[str, int]:
        if not v:
            raise ValueError("the agent mix is empty")
        for key, count in v.items():
            mods = key.split("+")
            if any(not m.strip() for m in mods):
                raise ValueError(f"'{key}' has an empty modality name")
            if len(set(mods)) != len(mods):
                raise ValueError(f"'{key}' repeats a modality")
            if count < 0:
                raise ValueError(f"'{key}' has a negative count")
        if sum(v.values()) == 0:
            raise ValueError("the agent mix has no agents")
        return v


class PartitionConfig(Section):
    name: Literal["iid", "dirichlet", "group", "pathological", "shard"] = Field(
        "iid",
        description="how samples are dealt to agents: iid | dirichlet | group | pathological "
        "(classes_per_agent classes each) | shard (label-sorted shards, as in FedAvg)",
    )
    alpha: float = Field(0.5, gt=0, description="dirichlet: concentration (smaller = more skew)")
    classes_per_agent: int = Field(
        2, ge=1, description="pathological: the exact number of classes each agent holds"
    )
    class_assignment: Literal["random", "deterministic", "first-deterministic"] = Field(
        "random",
        description="pathological: which classes an agent holds: random (k distinct, seeded), "
        "deterministic (agent i: classes i..i+k-1 mod C) or first-deterministic (class i mod C, "
        "the rest random)",
    )
    shard_size: int | None = Field(
        None,
        ge=1,
        description="shard: samples per shard; default: all samples / (agents x shards_per_agent)",
    )
    shards_per_agent: int = Field(2, ge=1, description="shard: shards dealt to each agent")
    test_fraction: float = Field(
        0.25, gt=0, lt=1, description="share of each agent's samples held out as its test split"
    )
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of each agent's training samples held out as its validation split "
        "(seeded, class-stratified; for choosing hyperparameters, never the test split); 0: none",
    )
    select_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of each agent's training samples it holds out for its own choices "
        "during training (parse-plus's method.plus_private picks its local-protocol predictor on "
        "them; seeded, class-stratified, taken after validation); nothing trains on them; 0: none",
    )
    select_from: Literal["train", "validation"] = Field(
        "train",
        description="where the samples for those choices come from: carved out of each "
        "agent's training samples (select_fraction), or its validation samples (a tuning run: "
        "the choice is then a validation result, to fix with method.plus_private_choice)",
    )
    samples_per_agent: int | None = Field(
        None, ge=2, description="cap on samples per agent (train + test); default: use all data"
    )
    min_train: int = Field(4, ge=1, description="fewest training samples an agent may get")


class TopologyConfig(Section):
    name: Literal[
        "ring", "chordal-ring", "random-gossip", "erdos-renyi", "torus", "full", "edge-list"
    ] = Field("ring", description="peer-to-peer graph")
    p: float = Field(0.2, gt=0, le=1, description="erdos-renyi: edge probability")
    degree: int = Field(4, ge=1, description="random-gossip: degree of each round's random graph")
    chord: int | None = Field(None, ge=2, description="chordal-ring: chord length (default sqrt N)")
    path: str | None = Field(None, description="edge-list: file of 'i j' lines (0-based ids)")
    holder_graph: Literal["induced", "overlay"] = Field(
        "overlay",
        description="graph among a block's holders: overlay (the same generator run over the "
        "holders alone, so they stay linked) or induced (the base graph restricted to them, "
        "which may fall apart)",
    )
    mixing: Literal["metropolis-hastings", "uniform", "max-degree"] = Field(
        "metropolis-hastings", description="mixing weights on a holder graph"
    )


class ModelConfig(Section):
    split: tuple[int, int, int] = Field(
        (64, 64, 64), description="slice sizes (unique, redundant, synergistic) of each embedding"
    )
    fusion: Literal["mean", "concat", "gated", "attention"] = Field(
        "mean", description="how synergistic slices of several modalities are fused"
    )
    head_hidden: int = Field(0, ge=0, description="hidden units of each head (0 = linear head)")
    ensemble: Literal["logits", "probs"] = Field(
        "logits", description="ensemble of heads: mean of logits or mean of probabilities"
    )
    encoder: str = Field(
        "auto",
        description="encoder of every modality: auto (by kind: mlp for vectors, conv1d for "
        "series, conv2d for images), a registered name, or package.module:Class, built as "
        "Class(input_shape, out_dim) (see docs/plugins.md)",
    )

    @field_validator("split")
    @classmethod
    def _check_split(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(x < 1 for x in v):
            raise ValueError("every slice needs at least one unit")
        return v


class MethodConfig(Section):
    name: str = Field("parse", description="method (see `parse-dfl methods`)")
    lambda_h: float = Field(
        0.5, ge=0, description="parse, parse-plus: weight of the per-head CE terms"
    )
    beta: float = Field(0.1, ge=0, description="parse, parse-plus: weight of the alignment loss")
    tau: float = Field(0.2, gt=0, description="parse, parse-plus: InfoNCE temperature")
    align: bool = Field(True, description="parse, parse-plus: use the alignment / separation loss")
    redundant_head_scope: Literal["all", "modality", "type", "none"] = Field(
        "all",
        description="parse, parse-plus: who averages the redundant head: all agents, agents "
        "sharing a modality, agents of the same type, or nobody",
    )
    share_unique_heads: bool = Field(
        True, description="parse, parse-plus: average unique heads among holders"
    )
    share_synergy: bool = Field(
        True, description="parse, parse-plus: average fusion+synergy head per type"
    )
    plus_projectors: bool = Field(
        False,
        description="parse-plus: one non-linear projector per slice on a shared trunk "
        "(false: PARSE's single linear layer cut into u/r/s)",
    )
    plus_projector_hidden: int = Field(
        0,
        ge=0,
        description="parse-plus: hidden units of each slice projector (0 = as many as keep "
        "the three projectors within the parameters of PARSE's last encoder layer)",
    )
    plus_decor: Literal["xcov", "hsic", "none"] = Field(
        "xcov",
        description="parse-plus: penalty on the dependence of u_m with r_m and with the other "
        "modalities' r (r held fixed): squared cross-correlation (xcov), kernel HSIC or none",
    )
    plus_gamma: float = Field(1.0, ge=0, description="parse-plus: weight of the u/r penalty")
    plus_residual: bool = Field(
        False,
        description="parse-plus: the unique, synergy and personal heads learn the residual of "
        "the redundant head (their logits added to its detached logits in their own CE)",
    )
    plus_agreement: bool = Field(
        False,
        description="parse-plus: the redundant slices learn only from the alignment (what the "
        "modalities agree on); the heads read them without sending the label's gradient back",
    )
    plus_cross: float = Field(
        0.0,
        ge=0,
        description="parse-plus: weight of a penalty on how well a private predictor reads "
        "each u_m from the other modalities' slices (multimodal agents; 0: off): what the "
        "other modality also knows is not unique",
    )
    plus_adversary: float = Field(
        0.0,
        ge=0,
        description="parse-plus: weight of a confusion loss that keeps a private classifier "
        "from reading, in each u_m, what the other modalities predict (multimodal agents; "
        "0: off)",
    )
    plus_discriminator: bool = Field(
        False,
        description="parse-plus: a modality discriminator (shared by all agents) must tell "
        "the modality from its unique slice",
    )
    plus_delta: float = Field(
        0.1, ge=0, description="parse-plus: weight of the modality discriminator's loss"
    )
    plus_fusion: Literal["mean", "tensor", "mlp", "concat", "gated", "attention"] = Field(
        "mean",
        description="parse-plus: synergy fusion: PARSE's mean (or concat, gated, attention), "
        "or one that can express interactions: low-rank tensor product (tensor) or concat + "
        "hidden layer (mlp)",
    )
    plus_fusion_hidden: int = Field(
        0, ge=0, description="parse-plus: hidden units of mlp/tensor fusion (0 = synergy width)"
    )
    plus_synergy_hidden: int = Field(
        0,
        ge=-1,
        description="parse-plus: hidden units of the synergy head (-1 = synergy width, 0 = linear)",
    )
    plus_synergy_trunk: int = Field(
        0,
        ge=0,
        description="parse-plus: width of the synergy slice's own trunk per modality, shared "
        "among multimodal holders (0: s reads the trunk that u and r read, as in PARSE)",
    )
    plus_synergy_raw: bool = Field(
        False,
        description="parse-plus: the s projector reads the modality's raw input (flattened), "
        "not a trunk: with tensor fusion the synergy is a low-rank bilinear form of the inputs "
        "(multimodal agents; excludes plus_synergy_trunk)",
    )
    plus_personal_weights: bool = Field(
        False,
        description="parse-plus: per-agent ensemble weights over the heads, trained on the "
        "agent's data and never shared",
    )
    plus_personal_head: bool = Field(
        False,
        description="parse-plus: a private head on all of the agent's slices, never shared, "
        "in the ensemble",
    )
    plus_local_head: bool = Field(
        False,
        description="parse-plus: a private correction of the ensemble, trained on the agent's "
        "own data (on detached slices: nothing shared changes) and used only under the local "
        "protocol",
    )
    plus_local_hidden: int = Field(
        0,
        ge=0,
        description="parse-plus: hidden width of the local-protocol correction (0: linear)",
    )
    plus_private: bool = Field(
        False,
        description="parse-plus: each agent also trains a private model (the local method's) "
        "on its own data and, under the local protocol, predicts with the shared ensemble, the "
        "private model or their mean, whichever is most accurate on its held-out samples "
        "(partition.select_fraction)",
    )
    plus_private_margin: float = Field(
        0.0,
        ge=0,
        le=1,
        description="parse-plus with plus_private: the held-out accuracy by which another "
        "predictor must beat the shared ensemble to be chosen (ties keep the ensemble)",
    )
    plus_private_scope: Literal["agent", "type"] = Field(
        "agent",
        description="parse-plus with plus_private: each agent chooses on its own held-out "
        "samples (agent), or the agents of a type choose together on all of theirs (type)",
    )
    plus_private_choice: dict[str, Literal["ensemble", "private", "mean"]] = Field(
        default_factory=dict,
        description="parse-plus with plus_private: a fixed local-protocol predictor per agent "
        "type (e.g. {acc: private}; a type not named keeps the ensemble), chosen beforehand on "
        "validation data (results.json local_choice_by_type): no training samples are held out",
    )
    plus_split: Literal["fixed", "pid"] = Field(
        "fixed",
        description="parse-plus: slice sizes: model.split (fixed) or its total divided by the "
        "dataset PID of the training samples (pid: u ~ max(U1, U2), r ~ R, s ~ S)",
    )
    missing_modality: Literal["zero", "skip"] = Field(
        "zero",
        description="dsgd-task: a modality an agent lacks is zero-filled, or skipped in the mean",
    )
    harmony_stage1_fraction: float = Field(
        0.5, ge=0, le=1, description="harmony: share of the rounds spent on modality-wise DSGD"
    )
    harmony_warmup_fraction: float = Field(
        0.2,
        ge=0,
        le=1,
        description="harmony: share of the fusion rounds trained before clustering (>= 1 round)",
    )
    harmony_encoder_lr_scale: float = Field(
        0.1, gt=0, description="harmony: lr factor of multimodal encoders during fusion training"
    )
    harmony_clusters: int = Field(
        2, ge=1, description="harmony: k of the k-means on modality biases"
    )
    common_init: bool = Field(
        True, description="every shared block starts from the same values on all its holders"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="a plug-in method's own settings, checked by its `Options` model (see "
        "docs/plugins.md); built-in methods take theirs as the flat keys above",
    )


class TrainConfig(Section):
    rounds: int = Field(40, ge=1, description="communication rounds")
    local_steps: int = Field(5, ge=0, description="local optimisation steps per round")
    batch_size: int = Field(
        32,
        ge=1,
        description="mini-batch size; an agent with fewer training samples repeats some of "
        "them within a batch, and a size above all agents' training samples together is refused",
    )
    lr: float = Field(0.01, gt=0, description="learning rate")
    optimizer: Literal["sgd", "adam"] = Field("adam", description="local optimiser")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd: momentum")
    weight_decay: float = Field(0.0, ge=0, description="weight decay")
    eval_every: int = Field(5, ge=1, description="evaluate every this many rounds (and the last)")
    eval_missing: bool = Field(
        True,
        description="at the end of a run, score every multimodal agent on the global test set "
        "with each of its modalities absent (a failed sensor; `parse-dfl missing`), into "
        "results.json `missing_modality`",
    )
    eval_global_samples: int = Field(
        0,
        ge=0,
        description="score the global protocol on a fixed, seeded, class-stratified subsample "
        "of this many held-out samples (0: all of them). Global evaluation costs O(agents^2); "
        "for very large runs. Recorded in results.json (global_test_size, global_test_full_size)",
    )


class EngineConfig(Section):
    name: str = Field(
        "batched",
        description="engine that runs the rounds: batched (default), reference (the plain "
        "per-agent loop, the specification) or distributed (torchrun)",
    )
    shard_engine: Literal["batched", "reference"] = Field(
        "batched",
        description="with engine.name distributed: the engine that runs each process's own "
        "agents (batched: stacked in cohorts; reference: the plain per-agent loop)",
    )
    device: str = Field(
        "cpu",
        description="torch device: cpu, cuda, cuda:N, mps, or auto (cuda if available, else "
        "cpu); a device this machine lacks is refused before the run starts",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads (default: the cores the 1-minute load average "
        "leaves free, at least 1: a thread team sharing a busy core waits at every barrier)",
    )
    dtype: Literal["float32", "float64"] = Field(
        "float32",
        description="floating-point type of models and data; float64 makes engines comparable "
        "to rounding (the equivalence tests use it)",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if not DEVICE.fullmatch(v):
            raise ValueError(f"'{v}' is not a device: use auto, cpu, cuda, cuda:N or mps")
        return v


class FaultsConfig(Section):
    crash_fraction: float = Field(0.0, ge=0, lt=1, description="share of agents that crash")
    crash_round: int = Field(1, ge=1, description="round in which the crashed agents go down")
    crash_rounds: int = Field(
        0, ge=0, description="rounds a crashed agent stays down (0 = it never comes back)"
    )
    link_failure: float = Field(0.0, ge=0, lt=1, description="chance each link is down in a round")
    straggler: float = Field(
        0.0, ge=0, lt=1, description="chance a live agent skips its local steps in a round"
    )
    message_loss: float = Field(
        0.0, ge=0, lt=1, description="chance one block message on a link is lost in a round"
    )
    relink: bool = Field(
        False,
        description="while agents are down, each block's holder graph is drawn again over its "
        "live holders (topology.holder_graph=overlay; the induced graph has no links to add), "
        "so a crash does not cut a block's holders into pieces that never agree again",
    )

    @property
    def active(self) -> bool:
        return any((self.crash_fraction, self.link_failure, self.straggler, self.message_loss))


class AttackConfig(Section):
    kind: Literal["none", "sign-flip", "noise", "scale", "nan", "label-flip"] = Field(
        "none",
        description="what attackers do: send -x, x + noise, scale * x, non-finite values (NaN), "
        "or train on flipped labels",
    )
    fraction: float = Field(0.0, ge=0, lt=1, description="share of agents that attack")
    scale: float = Field(10.0, description="scale: factor applied to the sent parameters")
    noise: float = Field(1.0, ge=0, description="noise: std of the Gaussian added to what is sent")


class RobustConfig(Section):
    rule: Literal["mean", "clip", "trimmed-mean", "median"] = Field(
        "mean",
        description="how a holder combines received blocks: weighted mean (plain gossip), "
        "self-centred clipping, coordinate-wise trimmed mean, or coordinate-wise median",
    )
    radius: float = Field(1.0, gt=0, description="clip: radius of neighbours' differences")
    trim: float = Field(
        0.2, ge=0, lt=0.5, description="trimmed-mean: share cut from each end per coordinate"
    )


class CheckpointConfig(Section):
    every: int = Field(
        0,
        ge=0,
        description="write a checkpoint every this many rounds into the run folder (0 = off)",
    )


class LoggingConfig(Section):
    tensorboard: bool = Field(
        False,
        description="also write TensorBoard scalars to RUN/tensorboard (needs the tensorboard "
        "package: pip install 'parse-dfl[tensorboard]'); metrics.csv is always written",
    )


class Config(Section):
    seed: int = Field(0, description="seed for data split, models, batches and random graphs")
    data: DataConfig = Field(default_factory=DataConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    robust: RobustConfig = Field(default_factory=RobustConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _check_names(self) -> Config:
        """Names and import paths through the registry, which loads the data, method and engine
        packages only now (why: they import this module). Raises UserError (one line)."""
        registry.resolve("source", self.data.name, "data.name")
        method = registry.resolve("method", self.method.name, "method.name")
        registry.resolve("engine", self.engine.name, "engine.name")
        if self.model.encoder != "auto":
            registry.resolve("encoder", self.model.encoder, "model.encoder")
        options = _check_options(getattr(method, "Options", None), self.method.options)
        if options != self.method.options:
            self.method.options = options  # defaults filled in: results.json records them
        pc = self.partition
        if pc.select_from == "validation" and (pc.val_fraction == 0 or pc.select_fraction > 0):
            raise ValueError(
                "partition.select_from: validation scores the choices on the validation "
                "samples: set partition.val_fraction > 0 and partition.select_fraction=0"
            )
        if self.topology.name == "edge-list" and not self.topology.path:
            raise ValueError("topology.path: edge-list needs a path to the edge file")
        return self


def _check_options(model: type[BaseModel] | None, options: dict[str, Any]) -> dict[str, Any]:
    """`method.options` checked by the method's own `Options` model (every key must be one of
    its fields, whatever its own `extra` setting); returns them with defaults filled in."""
    where = "method.options"
    if model is None:
        if options:
            key = next(iter(options))
            raise UserError(f"{where}.{key}", "unknown key (this method takes no options)")
        return options
    for key in options:
        if key not in model.model_fields:
            known = ", ".join(model.model_fields) or "none"
            raise UserError(
                f"{where}.{key}", f"unknown key (the options of this method are {known})"
            )
    try:
        return model.model_validate(options).model_dump(mode="json")
    except ValidationError as e:
        err = _format_validation_error(e)
        loc = f"{where}.{err.where}" if err.where != "config" else where
        raise UserError(loc, err.problem) from None


def _format_validation_error(err: ValidationError) -> UserError:
    first = err.errors()[0]
    loc = ".".join(p if isinstance(p, str) and p.isprintable() else repr(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if ": " in msg and not loc and msg.split(": ", 1)[0].count(".") >= 1:
        loc, msg = msg.split(": ", 1)
    inp = first.get("input")
    if first["type"] not in ("extra_forbidden", "missing", "value_error") and not isinstance(
        inp, dict
    ):
        msg = f"{msg} (got {inp!r})"
    more = len(err.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return UserError(loc or "config", msg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (['a', 'b'], value), the value read as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise UserError("--set", f"'{text}' is not key=value")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise UserError("--set", f"'{key}' is not a dotted key such as train.rounds")
    try:
        value = loads(raw, "--set") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise UserError(".".join(path), f"'{part}' is not a section")
            node = nxt
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config or sweep file as a mapping (bounded: see parse_dfl.yamlsafe)."""
    raw = load_file(path, "config file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(str(path), "the config must be a mapping of sections")
    return raw


def build_config(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise _format_validation_error(e) from None


PATH_KEYS = (("data", "path"), ("topology", "path"))
"""Config keys that name files: a relative one is read against the file that names it."""


def resolve_paths(raw: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """Make every relative file path in `raw` (PATH_KEYS) absolute against the folder `base`,
    in place; returns `raw`. Why: a config that names `my_data.npz` means the file beside it,
    wherever the command is run from (a sweep's `base` is read the same way)."""
    for section, key in PATH_KEYS:
        node = raw.get(section)
        if not isinstance(node, dict):
            continue
        value = node.get(key)
        relative = isinstance(value, str) and value and not Path(value).is_absolute()
        if relative and not str(value).startswith("~"):  # ~/x: the user's home, as npz reads it
            node[key] = os.path.normpath(os.path.join(os.path.abspath(base), str(value)))
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML file (or start from defaults), apply `--set` overrides, validate.

    Relative file paths (data.path, topology.path) in the file are resolved against the file's
    folder, and those given by `--set` against the working directory; both are stored absolute,
    so a run folder's config.yaml names the same file from anywhere."""
    raw = resolve_paths(read_yaml(path), Path(path).parent) if path is not None else {}
    raw = apply_overrides(raw, list(overrides or []))
    return build_config(resolve_paths(raw, Path.cwd()))


def describe_fields(
    model: type[BaseModel] = Config, prefix: str = ""
) -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every field: the config reference."""
    rows: list[tuple[str, str, str]] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, f"{prefix}{name}."))
        else:
            default = info.get_default(call_default_factory=True)
            rows.append((f"{prefix}{name}", repr(default), info.description or ""))
    return rows


def result_defining(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a dumped config that defines a run's result: everything but `engine`
    (engines compute the same rounds; switching engine or thread count must not invalidate
    a finished run or a checkpoint), except its number type, which changes the arithmetic,
    and `logging` (what is written along the way). Sweeps compare finished runs with it
    and checkpoints record it."""
    out = {k: v for k, v in cfg.items() if k not in ("engine", "logging")}
    out["engine"] = {"dtype": cfg.get("engine", {}).get("dtype", "float32")}
    return out
