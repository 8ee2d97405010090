"""``serve.runtime.ray_serve_env``: HAProxy's per-instance files and ports are never inherited (a test
session and a local cluster on one machine must not share them), and its admin socket path fits a Unix
socket however deep the state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve import runtime


@pytest.fixture
def with_haproxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/usr/sbin/haproxy")


def test_instance_files_and_ports_are_fresh_policy_is_inherited(
    with_haproxy: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = runtime.ray_serve_env(state_dir=tmp_path / "a")
    for k, v in first.items():  # what a parent process exported (the test session's conftest does)
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_RETRIES", "7")
    second = runtime.ray_serve_env(state_dir=tmp_path / "b")
    for key in (
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
    ):
        assert second[key] != first[key], key
    assert second["RAY_SERVE_HAPROXY_RETRIES"] == "7"  # a policy the user set wins
    assert second["RAY_SERVE_HAPROXY_RETRY_ON"] == runtime.RETRY_ON
    assert second["RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"] == "uri"


def test_the_admin_socket_path_fits_however_deep_the_state_dir(with_haproxy: None, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / "state" / "haproxy"
    env = runtime.ray_serve_env(state_dir=deep)
    socket_dir = Path(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent
    assert len(f"{socket_dir}/{'0' * 56}/admin.sock") < 108
    assert env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"].startswith(str(deep))
