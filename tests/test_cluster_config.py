"""The cluster configs validate against the schema that ships with Ray, and say what the
training code expects: the learner and self-play resources, spot self-play nodes scaled from
zero, the project installed on every node, token auth, no public dashboard."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from keisei_ray.config import ClusterConfig

ROOT = Path(__file__).resolve().parents[1]
CLOUD = ["cluster.yaml", "cluster-gcp.yaml"]
ALL = [*CLOUD, "deploy/fake-cluster.yaml"]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
DEFAULTS = ClusterConfig()


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(data, dict)
    return data


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in config["available_node_types"].items()
            if name != config["head_node_type"]}


def with_resource(config: dict[str, Any], resource: str) -> list[str]:
    return [name for name, spec in config["available_node_types"].items()
            if spec.get("resources", {}).get(resource, 0) > 0]


@pytest.mark.parametrize("name", ALL)
def test_validates_against_rays_schema(name: str) -> None:
    config = load(name)
    jsonschema.validate(config, SCHEMA)
    if name in CLOUD:
        # What `ray up` does before launching anything: the provider's defaults filled in,
        # then checked (node types, head type, max_workers against the types' min_workers).
        config = prepare_config(copy.deepcopy(config))
    # (The wheel lacks the fake provider's defaults file; that config is complete without.)
    validate_config(config)


def test_the_schema_check_catches_mistakes() -> None:
    config = load("cluster.yaml")
    config["max_worker"] = 3  # a typo of max_workers
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(config, SCHEMA)
    config = load("cluster.yaml")
    config["available_node_types"]["selfplay.cpu"]["resources"]["selfplay"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, SCHEMA)  # custom resources are whole numbers


@pytest.mark.parametrize("name", ALL)
def test_only_the_learner_and_self_play_nodes_have_their_resources(name: str) -> None:
    config = load(name)
    learner = with_resource(config, DEFAULTS.learner_resource)
    selfplay = with_resource(config, DEFAULTS.worker_resource)
    assert len(learner) == 1 and len(selfplay) == 1
    assert learner != selfplay
    head = config["available_node_types"][config["head_node_type"]]
    # The head runs the driver: no custom resource, so neither the learner nor workers go there
    # (the fake cluster's head doubles as its learner node: it has no GPU node type).
    if name in CLOUD:
        assert not set(head["resources"]) & {DEFAULTS.learner_resource, DEFAULTS.worker_resource}
        assert config["available_node_types"][learner[0]]["min_workers"] == 1
    spec = config["available_node_types"][selfplay[0]]
    assert spec["min_workers"] == 0 and spec["max_workers"] >= 1  # autoscaled from zero
    assert config["max_workers"] == sum(t.get("max_workers", 0)
                                        for t in worker_types(config).values())


@pytest.mark.parametrize("name", CLOUD)
def test_gpu_learner_and_spot_self_play_nodes(name: str) -> None:
    config = load(name)
    types = config["available_node_types"]
    learner = types[with_resource(config, DEFAULTS.learner_resource)[0]]["node_config"]
    selfplay = types[with_resource(config, DEFAULTS.worker_resource)[0]]["node_config"]
    if config["provider"]["type"] == "aws":
        assert learner["InstanceType"].startswith(("g", "p"))  # a GPU instance family
        assert selfplay["InstanceMarketOptions"]["MarketType"] == "spot"
    else:
        assert learner["guestAccelerators"][0]["acceleratorCount"] == 1
        assert {"preemptible": True} in selfplay["scheduling"]


@pytest.mark.parametrize("name", CLOUD)
def test_every_node_installs_the_project(name: str) -> None:
    config = load(name)
    assert config["file_mounts"]["~/keisei-ray"] == "."
    common = config["setup_commands"]
    installs = [c for c in common if "-e ~/keisei-ray" in c]
    assert installs and all('"ray[default]==' in c for c in installs)
    # CPU nodes (head, self-play) get PyTorch's CPU build; the GPU type its own commands.
    assert any("torch==" in c and "download.pytorch.org/whl/cpu" in c for c in common)
    for spec in worker_types(config).values():
        own = spec.get("worker_setup_commands")
        if own is not None:
            assert any("-e ~/keisei-ray" in c for c in own)
            assert not any("whl/cpu" in c for c in own)
            assert "GPU" in spec["resources"] or "InstanceType" in spec["node_config"]


@pytest.mark.parametrize("name", CLOUD)
def test_token_auth_and_no_public_dashboard(name: str) -> None:
    config = load(name)
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
