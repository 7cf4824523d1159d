"""``prune2drive doctor``: what this machine offers the node, one line per item.

Exit status is non-zero only when something *required* is missing; optional pieces (TensorRT,
cv_bridge, a GPU) are reported with what the node will do without them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import re
import sys
from dataclasses import dataclass

from prune2drive_ros.discovery import discovery_problem, localhost_discovery_env, ros_distro

MIN_PYTHON = (3, 10)
# transformers 5.20+ (what Python 3.10 resolves to) needs torch 2.6; export.py's dynamo=False needs 2.5.
MIN_TORCH = "2.6"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = False
    warn: bool = False  # present but not as it should be: the node runs, maybe not as intended

    def line(self) -> str:
        mark = "ok  " if self.ok and not self.warn else ("WARN" if self.ok else ("FAIL" if self.required else "--  "))
        return f"[{mark}] {self.name:<14} {self.detail}"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import(module: str):
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # a broken install raises more than ImportError
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]


def check_python() -> Check:
    ok = sys.version_info >= MIN_PYTHON
    return Check("python", ok, f"{platform.python_version()} ({sys.executable})", required=True)


def check_torch() -> list[Check]:
    torch, err = _import("torch")
    if torch is None:
        return [Check("torch", False, f"not importable ({err})", required=True)]
    problem = torch_problem(torch.__version__, _version("transformers"))
    checks = [Check("torch", problem is None, f"{torch.__version__}{'; ' + problem if problem else ''}", required=True)]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            checks.append(
                Check(
                    f"cuda:{i}",
                    True,
                    f"{props.name}, compute capability {props.major}.{props.minor}, "
                    f"{free / 2**30:.1f} / {total / 2**30:.1f} GiB free, bf16="
                    f"{torch.cuda.is_bf16_supported()}",
                )
            )
    else:
        checks.append(Check("cuda", False, "no CUDA device: the model runs on CPU in fp32"))
    return checks


def torch_problem(torch_version: str, transformers_version: str | None) -> str | None:
    """Why this torch is too old for the package or for the installed transformers; None when it is not."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    have = Version(Version(torch_version).base_version)  # 2.8.0a0+nv24 and 2.13.0+cpu count as their release
    needed = [(Version(MIN_TORCH), "prune2drive_ros")]
    if transformers_version:
        for line in importlib.metadata.requires("transformers") or []:
            req = Requirement(line)
            if req.name == "torch" and req.marker is not None and req.marker.evaluate({"extra": "torch"}):
                floors = [Version(s.version) for s in req.specifier if s.operator in (">=", ">", "==", "~=")]
                needed += [(floor, f"transformers {transformers_version}") for floor in floors]
    missing = [(floor, who) for floor, who in needed if have < floor]
    if not missing:
        return None
    floor, who = max(missing)
    return f"too old: {who} needs torch >= {floor} (transformers disables PyTorch below its minimum)"


def tensorrt_cuda_problem(torch_cuda: str | None, dist_names: list[str]) -> str | None:
    """A pip TensorRT built for another CUDA major than torch's (e.g. plain `tensorrt` = cu13 next to a cu12 torch)."""
    flavours = sorted({int(m.group(1)) for name in dist_names
                       if (m := re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_](?:libs|bindings))?", name.lower()))})
    if not torch_cuda or not flavours:
        return None  # a CPU torch, or TensorRT from JetPack / a system install
    major = int(torch_cuda.split(".")[0])
    if flavours == [major]:
        return None
    return (f"pip TensorRT for CUDA {', '.join(map(str, flavours))} next to torch built for CUDA {torch_cuda}; "
            f"install tensorrt-cu{major}")


def check_tensorrt() -> Check:
    torch, _ = _import("torch")
    dists = [d.metadata["Name"] or "" for d in importlib.metadata.distributions()]
    mismatch = tensorrt_cuda_problem(getattr(getattr(torch, "version", None), "cuda", None), dists)
    mod, err = _import("tensorrt")
    if mod is None:
        detail = f"not importable ({err}); vision backend falls back to onnxruntime/torch"
        return Check("tensorrt", mismatch is not None, f"{mismatch}; {detail}" if mismatch else detail,
                     warn=mismatch is not None)
    from prune2drive_ros.vlm.backends.tensorrt_backend import version_problem

    version = getattr(mod, "__version__", "unknown")
    problem = version_problem(version) or mismatch
    if problem:
        return Check("tensorrt", True, f"{problem}; vision backend falls back to onnxruntime/torch", warn=True)
    return Check("tensorrt", True, version)


def check_module(name: str, module: str, *, required: bool = False, missing: str = "") -> Check:
    mod, err = _import(module)
    if mod is None:
        return Check(name, False, f"not importable ({err}){'; ' + missing if missing else ''}", required)
    version = getattr(mod, "__version__", None) or _version(module) or "present"
    return Check(name, True, str(version), required)


def rclpy_origin() -> Check:
    mod, err = _import("rclpy")
    if mod is None:
        return Check("rclpy", False, f"not importable ({err}); install ROS 2 or `pip install .[ros]`")
    path = os.path.dirname(mod.__file__)
    distro = os.environ.get("ROS_DISTRO")
    if path.startswith("/opt/ros/"):
        origin = f"system ROS 2 ({distro or path.split('/')[3]})"
    elif _version("ros-rclpy"):
        origin = f"pip wheels (ros-rclpy {_version('ros-rclpy')})"
    else:
        origin = f"workspace ({distro or 'unknown distro'})"
    return Check("rclpy", True, f"{origin} at {path}")


def dds_settings() -> Check:
    distro = ros_distro()
    variable = next(iter(localhost_discovery_env(distro)))
    setting = os.environ.get(variable, "<unset>")
    domain = os.environ.get("ROS_DOMAIN_ID", "<unset: 0>")
    rmw = os.environ.get("RMW_IMPLEMENTATION", "<default>")
    detail = f"{distro or 'unknown distro'}: ROS_DOMAIN_ID={domain} {variable}={setting} RMW={rmw}"
    problem = discovery_problem(distro)
    return Check("dds", True, f"{detail}; {problem}" if problem else detail, warn=problem is not None)


def vision_backend_line() -> Check:
    try:
        from prune2drive_ros.vlm.backends import resolve_backend_name
    except Exception:
        return Check("vision", True, "torch (backend selection not installed)")
    chosen, reason = resolve_backend_name("tensorrt")
    return Check("vision", True, f"'tensorrt' requested -> {chosen} ({reason})")


def weights_line() -> Check:
    """Which ``weights`` precisions each device here runs (and, for the others, why not)."""
    try:
        import torch

        from prune2drive_ros.vlm.quantize import WEIGHT_CHOICES, torchao_version, weights_problem
    except Exception as exc:
        return Check("weights", False, f"cannot tell ({type(exc).__name__}: {exc})".splitlines()[0])
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())] or [torch.device("cpu")]
    parts = []
    for device in devices:
        problems = {w: weights_problem(w, device) for w in WEIGHT_CHOICES[1:]}
        no = "; ".join(f"not {w}: {why}" for w, why in problems.items() if why)
        parts.append(f"{device}: {', '.join(w for w, why in problems.items() if why is None)}" + (f" ({no})" if no else ""))
    ao = torchao_version()
    return Check("weights", True, " | ".join(parts) + f"; torchao {ao or 'not installed'}")


def run_checks() -> list[Check]:
    checks = [check_python(), *check_torch()]
    checks += [
        check_module("transformers", "transformers", required=True),
        check_module("numpy", "numpy", required=True),
        check_module("opencv", "cv2", required=True),
        rclpy_origin(),
        dds_settings(),
        check_module("cv_bridge", "cv_bridge", missing="the node converts images with numpy/OpenCV"),
        check_tensorrt(),
        check_module("onnxruntime", "onnxruntime", missing="vision backend falls back to torch"),
        vision_backend_line(),
        weights_line(),
    ]
    return checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="print only failures")


def run(args: argparse.Namespace) -> int:
    checks = run_checks()
    for check in checks:
        if not args.quiet or (check.required and not check.ok) or check.warn:
            print(check.line())
    missing = [c.name for c in checks if c.required and not c.ok]
    if missing:
        print(f"missing required: {', '.join(missing)}", file=sys.stderr)
        return 1
    print("all required components present")
    return 0
