"""The deployment manifests in cluster/ refer to what really exists in the repository: entrypoint modules
and their options, config files, the Serve app (same as configs/serve.yaml), the image the Dockerfile
builds, the Ray version we pin; and the monitoring files refer to metrics the feed exports."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve.config import parse

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))


def pinned_ray() -> str:
    m = re.search(r"^ray\[[^\]]*\]==([\d.]+)$", (REPO / "requirements" / "base.txt").read_text(), re.M)
    assert m, "requirements/base.txt pins ray"
    return m.group(1)


def image_names() -> set[str]:
    """The tags `make image` builds (Makefile IMAGE, per variant)."""
    make = (REPO / "Makefile").read_text()
    m = re.search(r"^IMAGE \?= (\S+)$", make, re.M)
    assert m, "Makefile defines IMAGE"
    return {m.group(1).replace("$(VARIANT)", v) for v in ("cpu", "gpu")}


def walk(node: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a YAML tree."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                out.append(v)
            out += walk(v, key)
    elif isinstance(node, list):
        for v in node:
            out += walk(v, key)
    return out


def check_entrypoint(command: str) -> None:
    """``python -m pkg.mod --opt value ...``: the module exists, its CLI has every option, files exist."""
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"], command
    module = importlib.import_module(argv[2])
    if hasattr(module, "__path__"):  # a package runs its __main__ (python -m pipelines.train)
        module = importlib.import_module(f"{argv[2]}.__main__")
    from typer.main import get_command

    cli = get_command(module.app) if hasattr(module, "app") else get_command_for(module)
    options = {o for p in cli.params for o in getattr(p, "opts", [])}
    for arg in argv[3:]:
        if arg.startswith("--"):
            assert arg.split("=")[0] in options, f"{argv[2]} has no option {arg}"
        elif arg.startswith("configs/"):
            assert (REPO / arg).exists(), arg


def get_command_for(module: Any) -> Any:
    import typer
    from typer.main import get_command

    t = typer.Typer()
    t.command()(module.main)
    return get_command(t)


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifests_use_our_image_and_ray_version(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] in {"RayCluster", "RayJob", "RayService"}
    assert set(walk(doc, "rayVersion")) == {pinned_ray()}
    images = set(walk(doc, "image"))
    assert images
    assert images <= image_names(), images


def test_the_rayjob_runs_a_real_entrypoint() -> None:
    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-train.yaml").read_text())
    check_entrypoint(doc["spec"]["entrypoint"])


def test_the_rayservice_deploys_the_app_of_configs_serve_yaml() -> None:
    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayservice-feed.yaml").read_text())
    apps = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    local = yaml.safe_load((REPO / "configs" / "serve.yaml").read_text())["applications"]
    assert [a["name"] for a in apps] == [a["name"] for a in local]
    for k8s, here in zip(apps, local, strict=True):
        assert k8s["import_path"] == here["import_path"]
        assert k8s["route_prefix"] == here["route_prefix"]
        parse(k8s["args"])  # validates like the app does at deploy time
        # Same app config, apart from the settings a multi-node deployment changes.
        changed = {"data_dir", "store", "clock"}
        assert {k: v for k, v in k8s["args"].items() if k not in changed} == {
            k: v for k, v in here["args"].items() if k not in changed
        }
        assert [d["name"] for d in k8s["deployments"]] == [d["name"] for d in here["deployments"]]
    assert parse(apps[0]["args"]).store.backend == "redis"  # replicas on several nodes share one store


def test_the_launcher_has_a_cpu_head_and_a_gpu_worker_group_on_our_images() -> None:
    doc = yaml.safe_load((CLUSTER / "launcher.yaml").read_text())
    types = doc["available_node_types"]
    head = types[doc["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for name, t in types.items() if "gpu" in name]
    assert gpu
    assert all(t["max_workers"] >= 1 for t in gpu)
    assert set(walk(doc, "image")) | set(walk(doc, "worker_image")) <= image_names()
    starts = " ".join(doc["head_start_ray_commands"] + doc["worker_start_ray_commands"])
    assert "--metrics-export-port" in starts
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in starts


def test_the_dockerfile_builds_from_the_pinned_ray_and_installs_our_requirements() -> None:
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    assert f"rayproject/ray:{pinned_ray()}-" in text
    assert "requirements/${VARIANT}.txt" in text
    for variant in ("cpu", "gpu"):
        assert (REPO / "requirements" / f"{variant}.txt").exists()
    for package in ("models", "pipelines", "serve", "configs"):
        assert f"COPY {package}/ {package}/" in text


def test_the_dashboard_and_scrape_config_refer_to_exported_metrics() -> None:
    dash = json.loads((CLUSTER / "monitoring" / "grafana-feed-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"ray_feed_[a-z_]+?(?:_bucket|_total)?\b", " ".join(exprs)))
    metrics_src = (REPO / "serve" / "metrics.py").read_text()
    exported = set(re.findall(r'"(feed_[a-z_]+)"', metrics_src))
    for name in used:
        base = re.sub(r"_(bucket|total)$", "", name.removeprefix("ray_"))
        assert base in exported, f"{name}: serve/metrics.py exports no {base}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("latency", "qps", "error", "fallback", "replica", "model version"):
        assert topic in titles, topic
    prom = yaml.safe_load((CLUSTER / "monitoring" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["job_name"] == "ray"
