"""Config: defaults, overrides, and one-line errors that name the field."""

from __future__ import annotations

import pytest

from parse_dfl.config import Config, describe_fields, load_config
from parse_dfl.errors import UserError


def test_defaults_and_overrides() -> None:
    cfg = load_config(
        "configs/quick.yaml",
        ["train.rounds=5", "agents.mix=acc:5,gyro:5,acc+gyro:5", "partition.alpha=0.1"],
    )
    assert cfg.train.rounds == 5
    assert cfg.agents.mix == {"acc": 5, "gyro": 5, "acc+gyro": 5}
    assert cfg.partition.alpha == 0.1
    assert Config().method.name == "parse"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.rounds=abc", "train.rounds"),
        ("train.rounds=0", "train.rounds"),
        ("train.lr=-1", "train.lr"),
        ("train.nonsense=1", "train.nonsense"),
        ("bogus.key=1", "bogus"),
        ("agents.mix=acc:x", "agents.mix"),
        ("agents.mix=acc", "agents.mix"),
        ("agents.mix=acc:0", "agents.mix"),
        ("partition.name=random", "partition.name"),
        ("model.split=[0,4,4]", "model.split"),
        ("method.name=magic", "method.name"),
        ("data.name=nowhere", "data.name"),
        ("engine.name=warp", "engine.name"),
        ("topology.name=edge-list", "topology.path"),
    ],
)
def test_bad_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(UserError) as err:
        load_config("configs/quick.yaml", [override])
    assert err.value.where == field, str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_yaml_names_the_line(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  rounds: [1, 2\n")
    with pytest.raises(UserError) as err:
        load_config(bad)
    assert str(bad) in err.value.where and "YAML" in err.value.problem


def test_every_field_is_documented() -> None:
    rows = describe_fields()
    assert len(rows) > 40
    undocumented = [key for key, _, doc in rows if not doc]
    assert undocumented == []
