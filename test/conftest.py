"""Shared test setup: DDS stays on this machine, on a domain no other run uses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prune2drive_ros.discovery import localhost_discovery_env, ros_distro

# Set before any test imports rclpy: localhost-only discovery and a per-run domain id, so parallel
# runs on one machine never hear each other and nothing leaves the host.
# (ROS_LOCALHOST_ONLY on Humble, ROS_AUTOMATIC_DISCOVERY_RANGE from Iron on.)
os.environ.update(localhost_discovery_env(ros_distro()))
os.environ.setdefault("ROS_DOMAIN_ID", str(120 + os.getpid() % 100))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``prune2drive ARGS`` in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "prune2drive_ros.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def wait_for(predicate, timeout: float, period: float = 0.05):
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    return predicate()


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random-weight DriveMM-shaped checkpoint (llama text model, transformers format)."""
    from prune2drive_ros.vlm.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), text_arch="llama", fmt="hf")


@pytest.fixture(scope="session")
def tiny_qwen_model(tmp_path_factory) -> Path:
    """The same geometry with a qwen2 text model."""
    from prune2drive_ros.vlm.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), text_arch="qwen2", fmt="hf")
