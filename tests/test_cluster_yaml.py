"""``cluster.yaml`` passes the same validation ``ray up`` runs before touching a cloud."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_cluster_yaml_is_accepted_by_ray_up_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg = prepare_config(raw)
    validate_config(cfg)  # raises on unknown keys or a bad head_node_type
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head runs no trials
    assert all(
        "ImageId" in t["node_config"] for t in cfg["available_node_types"].values()
    )  # without it Ray falls back to a very old AMI
    mounts = cfg["file_mounts"]
    assert "." in mounts.values()  # the repo (embedded data + code) reaches every node
