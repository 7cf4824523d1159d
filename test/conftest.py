"""Shared test setup: DDS stays on this machine, on a domain no other run uses."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # scripts/gpu-check.sh runs under a time limit that can cut pytest off before its summary: with this
    # set, each failure's traceback is printed the moment it happens, so a timed-out run still says why.
    if report.failed and os.environ.get("PRUNE2DRIVE_FAILURES_AT_ONCE"):
        sys.stderr.write(f"\n== FAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n")


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


def shutdown_context(context) -> None:
    """Shut an rclpy context down and destroy it, which takes its DDS participant down now.

    Left to the garbage collector (nodes sit in reference cycles through their callbacks and hold their
    context), Fast DDS tore a participant down inside a later GC pass, while other contexts were busy
    with DDS, and once spun there for good.
    """
    context.try_shutdown()
    context.destroy()


@pytest.fixture(autouse=True)
def _no_context_left_to_the_garbage_collector(request):
    """A ROS test must destroy every context it shut down (``shutdown_context``); see there why."""
    yield
    if request.node.get_closest_marker("ros") is None or "rclpy.context" not in sys.modules:
        return
    from rclpy.context import Context

    leaked = [c for c in gc.get_objects()
              if isinstance(c, Context) and c.handle is not None and c.handle.pointer and not c.ok()]
    for context in leaked:
        context.destroy()
    assert not leaked, f"{len(leaked)} rclpy context(s) shut down but not destroyed: use shutdown_context"


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


# What setup.py needs to build the package; copied so that parallel runs never share a build/ folder.
_BUILD_INPUTS = ["setup.py", "setup.cfg", "pyproject.toml", "package.xml", "README.md", "resource", "launch", "config",
                 "models", "prune2drive_ros"]


@dataclass(frozen=True)
class InstalledPackage:
    """prune2drive_ros installed non-editable under its own prefix: the layout ``ros2 launch``/``run`` read."""

    prefix: Path  # holds share/ament_index, share/prune2drive_ros and lib/prune2drive_ros
    site: Path  # where its Python package went

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a shell where this install is on the ament and Python paths."""
        env = dict(os.environ)
        # ros2-cli's .pth hook sets AMENT_PREFIX_PATH=sys.prefix only when it is unset; keep what it or a
        # sourced ROS install would give, behind this prefix.
        env["AMENT_PREFIX_PATH"] = os.pathsep.join([str(self.prefix), os.environ.get("AMENT_PREFIX_PATH") or sys.prefix])
        # Ahead of an editable install of the same package (its finder comes after sys.path).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.site), os.environ.get("PYTHONPATH")]))
        # This interpreter's scripts (ros2 from ros2-cli) even when the venv is not activated.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env


@pytest.fixture(scope="session")
def installed_package(tmp_path_factory) -> InstalledPackage:
    """``pip install --no-deps .`` (not editable) of this checkout into a temporary prefix, once per run."""
    src = tmp_path_factory.mktemp("p2d-src")
    for name in _BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif path.exists():
            shutil.copy2(path, src / name)
    prefix = tmp_path_factory.mktemp("p2d-prefix")
    # --ignore-installed: without it pip uninstalls the venv's own copy of the package (editable or not).
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--no-compile", "--ignore-installed", "--prefix", str(prefix), str(src)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # The scheme decides the exact folders (lib/python3.X/site-packages, Debian's local/.../dist-packages).
    marker = next(prefix.rglob("share/ament_index/resource_index/packages/prune2drive_ros"))
    init = next(prefix.rglob("prune2drive_ros/__init__.py"))
    return InstalledPackage(prefix=marker.parents[4], site=init.parents[1])
