"""What a user sees when something is missing or in the way: one clear line with the fix, no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from prune2drive_ros.vlm.loading import resolve_model_folder

NOT_CACHED = "prune2drive-tests/no-such-model"  # a hub id no cache holds


def test_offline_hub_id_not_in_the_cache_fails_in_one_line() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest: tests never download
    with pytest.raises(FileNotFoundError) as info:
        resolve_model_folder(NOT_CACHED)
    message = str(info.value)
    assert "\n" not in message
    assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert f"hf download {NOT_CACHED}" in message


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connecting is refused


def test_failed_download_of_a_hub_id_fails_in_one_line(tmp_path: Path) -> None:
    # Online mode against an endpoint on this machine that refuses connections: nothing leaves the host.
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path),
           "HF_ENDPOINT": f"http://127.0.0.1:{_refused_port()}"}
    code = (f"from prune2drive_ros.vlm.loading import resolve_model_folder; resolve_model_folder({NOT_CACHED!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("FileNotFoundError: ") and "could not be downloaded" in last, out.stderr
    assert f"hf download {NOT_CACHED}" in last
    # One exception, not the download error chained beneath it.
    assert out.stderr.count("Traceback") == 1, out.stderr


def test_make_tiny_model_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    dst = tmp_path / "model"
    dst.mkdir()
    (dst / "config.json").write_text("{}")
    (dst / "stale.safetensors").write_bytes(b"old")
    out = run_cli("make-tiny-model", str(dst))
    assert out.returncode == 1
    assert f"{dst} exists and is not empty; pass --force to replace it" in out.stderr
    assert (dst / "stale.safetensors").read_bytes() == b"old"

    out = run_cli("make-tiny-model", str(dst), "--force")
    assert out.returncode == 0, out.stderr
    assert not (dst / "stale.safetensors").exists()
    assert json.loads((dst / "config.json").read_text())["model_type"] == "llava_onevision"


def test_make_tiny_model_force_never_deletes_a_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    out = run_cli("make-tiny-model", str(tmp_path), "--force")
    assert out.returncode == 1
    assert "is not a checkpoint folder; not deleting it, even with --force" in out.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("hidden", ["rosbags", "nuscenes"])
def test_convert_nuscenes_without_its_extra_names_the_extra(hidden: str, tmp_path: Path) -> None:
    # Hide one module the way a [ros]-only install lacks it (rosbags at import, nuscenes-devkit at run).
    (tmp_path / "v1.0-mini").mkdir()
    code = (f"import sys; sys.modules[{hidden!r}] = None; from prune2drive_ros.cli import main; "
            f"sys.exit(main(['convert-nuscenes', '--dataroot', {str(tmp_path)!r}, '--out', {str(tmp_path / 'bag')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip() == (f"error: prune2drive convert-nuscenes: the Python package {hidden!r} is not "
                                  "installed; install the 'nuscenes' extra: pip install 'prune2drive_ros[nuscenes]' "
                                  "(in a checkout: pip install '.[nuscenes]')")


def test_nuscenes_extra_installs_what_convert_nuscenes_needs(installed_package) -> None:
    metadata = next(installed_package.site.glob("prune2drive_ros-*.dist-info/METADATA")).read_text()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "nuscenes" in line]
    names = {line.split()[1].split(">")[0].split("=")[0].split(";")[0] for line in requires
             if "extra == \"nuscenes\"" in line}
    assert {"rosbags", "nuscenes-devkit"} <= names, requires


def test_play_without_its_extra_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "bag").mkdir()
    code = ("import sys; sys.modules['rosbags'] = None; from prune2drive_ros.cli import main; "
            f"sys.exit(main(['play', {str(tmp_path / 'bag')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().endswith("the Python package 'rosbags' is not installed; install the 'nuscenes' "
                                       "extra: pip install 'prune2drive_ros[nuscenes]' (in a checkout: pip install "
                                       "'.[nuscenes]')"), out.stderr
