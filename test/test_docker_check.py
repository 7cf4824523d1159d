"""docker/check_images.py reads what each Dockerfile installs; the offline half of the image check.

The resolution itself needs PyPI and runs in CI (`python docker/check_images.py`); these tests cover
what it derives from the files, and the rules it applies to a resolution.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from conftest import REPO
from packaging.version import Version


def _load():
    spec = importlib.util.spec_from_file_location("check_images", REPO / "docker" / "check_images.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check = _load()


def test_desktop_image_is_read_from_its_requirement_files() -> None:
    image = check.parse_dockerfile(REPO / "docker" / "Dockerfile", REPO)
    assert image.base_name == "ros:kilted-ros-base" and image.base.python == "3.12"
    assert image.venv_site_packages
    external, main = image.steps
    assert external.index_url == "https://pypi.nvidia.com" and external.no_deps
    # Single source: the image installs exactly the requirement files' lines.
    assert main.requirements == check.read_requirements(REPO / "docker" / "requirements-desktop.txt")
    libs = check.pins_of(external.requirements)
    bindings = check.pins_of(main.requirements)
    assert libs["tensorrt-cu12-libs"] == bindings["tensorrt-cu12-bindings"]  # one TensorRT version
    assert REPO / "docker" / "constraints-noble.txt" in main.constraint_files
    assert check.apt_python(image)["numpy"] == "1.26.4"


def test_jetson_image_is_jetpack_61_with_pypi_as_its_index() -> None:
    image = check.parse_dockerfile(REPO / "docker" / "Dockerfile.jetson", REPO)
    assert image.base_name.startswith("nvcr.io/nvidia/l4t-jetpack:r36.4")
    assert dict(image.base.provides)["tensorrt"].startswith("10.")
    assert image.overrides_index and image.venv_site_packages
    torch_step, main = image.steps
    assert torch_step.index_url.startswith("https://pypi.jetson-ai-lab.io/jp6/cu126")
    assert Version(check.pins_of(torch_step.requirements)["torch"]) >= Version("2.6")
    assert not any(check.requirement_name(r).startswith("tensorrt") for r in main.requirements)  # JetPack's


def test_legacy_images_are_flagged_without_a_resolver(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG BASE_IMAGE=dustynv/l4t-pytorch:r36.4.0\nFROM ${BASE_IMAGE}\n"
        'RUN pip3 install "transformers>=5.0,<6" "tensorrt==10.13.3.9"\n')
    image = check.parse_dockerfile(dockerfile, tmp_path)
    assert not image.venv_site_packages and not image.overrides_index
    assert "PIP_INDEX_URL" in image.base.problem
    result = check.Result(image)
    check._static_checks(result, {"tensorrt": "11.4.0.106", "tensorrt-cu12-libs": "10.3.0",
                                  "tensorrt-cu12-bindings": "10.16.1.11"}, image.steps[0].requirements)
    text = "\n".join(result.errors)
    assert "metapackage" in text and "TensorRT 11 is not supported" in text and "differ" in text


def test_mixed_cuda_majors_are_found() -> None:
    resolved = {"nvidia-cuda-runtime-cu12": "12.8.90", "nvidia-cudnn-cu12": "9.10.2.21",
                "nvidia-cuda-runtime": "13.0.96", "torch": "2.10.0"}
    assert set(check.cuda_majors(resolved, None).values()) == {12, 13}
    assert set(check.cuda_majors({"tensorrt-cu12-libs": "10.3.0"}, 12).values()) == {12}


def test_installed_stand_in_is_a_wheel_of_that_version(tmp_path: Path) -> None:
    import zipfile

    check._installed_stand_in(tmp_path, "typing-extensions", "3.10.0.2")
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name == "typing_extensions-3.10.0.2+image-py3-none-any.whl"
    metadata = zipfile.ZipFile(wheel).read("typing_extensions-3.10.0.2+image.dist-info/METADATA").decode()
    assert "Version: 3.10.0.2+image" in metadata and "Requires-Dist" not in metadata
