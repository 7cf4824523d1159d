"""Which ROS 2 distro is installed, and the environment that keeps DDS discovery on this machine.

Humble limits discovery with ``ROS_LOCALHOST_ONLY=1``; Iron replaced that with
``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (and deprecated the old variable), which Humble ignores.
Does not import rclpy (the tests set this up before rclpy is loaded).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping

# Distros before Iron know only ROS_LOCALHOST_ONLY.
LOCALHOST_ONLY_DISTROS = ("foxy", "galactic", "humble")
# rclpy's major version per distro, for wheel installs where ROS_DISTRO is not set.
RCLPY_MAJOR_TO_DISTRO = {1: "foxy", 2: "galactic", 3: "humble", 4: "iron", 5: "iron", 7: "jazzy", 9: "kilted"}


def ros_distro(env: Mapping[str, str] | None = None) -> str | None:
    """ROS_DISTRO when set (a sourced ROS install sets it), else the distro of the installed rclpy wheels."""
    env = os.environ if env is None else env
    if env.get("ROS_DISTRO"):
        return env["ROS_DISTRO"].lower()
    for distro in ("humble", "jazzy", "kilted", "rolling"):
        try:
            importlib.metadata.version(f"ros-{distro}-rclpy")
            return distro
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        major = int(importlib.metadata.version("ros-rclpy").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None
    return RCLPY_MAJOR_TO_DISTRO.get(major, "rolling" if major > max(RCLPY_MAJOR_TO_DISTRO) else None)


def uses_localhost_only(distro: str | None) -> bool:
    return distro in LOCALHOST_ONLY_DISTROS


def localhost_discovery_env(distro: str | None) -> dict[str, str]:
    """The variable that keeps discovery on this machine for ``distro`` (Iron's, when unknown)."""
    if uses_localhost_only(distro):
        return {"ROS_LOCALHOST_ONLY": "1"}
    return {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


def discovery_problem(distro: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """What is wrong or missing in the discovery settings for ``distro``; None when they fit."""
    env = os.environ if env is None else env
    rng, only = env.get("ROS_AUTOMATIC_DISCOVERY_RANGE"), env.get("ROS_LOCALHOST_ONLY")
    if uses_localhost_only(distro):
        if only == "1":
            return None
        if rng:
            return (f"ROS_AUTOMATIC_DISCOVERY_RANGE={rng} has no effect on {distro}; set ROS_LOCALHOST_ONLY=1 "
                    "to keep DDS on this machine")
        return (f"no discovery setting: {distro} discovers peers on the whole network; set ROS_LOCALHOST_ONLY=1 "
                "for this machine only")
    if only and rng is None:
        return (f"ROS_LOCALHOST_ONLY is deprecated on {distro or 'this distro'}; "
                "set ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (or SUBNET) instead")
    if rng is None:
        return (f"no discovery setting: {distro or 'ROS 2'} discovers peers on the whole subnet; set "
                "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST for this machine only (SUBNET on a robot network)")
    return None
