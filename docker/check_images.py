"""Check that each Docker image's pip set resolves for the image's own Python and CPU, without Docker.

For every Dockerfile given:

1. read what it installs: the base image (``FROM``), the apt packages, and every ``pip install``
   with its ``-r`` / ``-c`` files and index options;
2. pin what is already there: the Python packages of the base image and of apt (Ubuntu's numpy,
   typing_extensions, ...). Installed into the system interpreter, pip cannot replace any of them
   (Debian packages have no RECORD); in a ``--system-site-packages`` venv only those that compiled
   apt modules are built against (numpy for cv2 / cv_bridge) must stay, and the Dockerfile has to
   pin them itself;
3. resolve the set with ``uv pip compile`` for the image's Python version and platform, binary
   wheels only, against PyPI (pip itself evaluates environment markers for the machine it runs on,
   which pulls x86-64-only dependencies into an aarch64 set);
4. resolve again with the extras the runtime relies on, pinned to the first result
   (``transformers[torch]``: transformers disables PyTorch below the torch its ``torch`` extra
   names; ``onnxruntime-gpu[cuda,cudnn]``: the CUDA its build needs);
5. check TensorRT (major 10, CUDA flavour spelled out) and that one CUDA major serves everything.

What is already installed (apt, the base image) and what the Dockerfile takes from another index
(``--index-url``: NVIDIA's TensorRT libs, the Jetson torch; not reachable here) enter the resolution
as stand-in wheels of their exact version without dependencies: pip keeps an installed version that
satisfies a requirement, and apt / the other index bring their own dependencies.
Exit status 1 when any image fails. Needs network access to PyPI only; uv caches what it fetched.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

PYPI = "https://pypi.org/simple"
SUPPORTED_TENSORRT_MAJORS = (10,)
# The extras the package's code paths need at run time, per distribution.
# onnxruntime-gpu's cuda/cudnn extras name the CUDA it was built for (1.24+: CUDA 13).
RUNTIME_EXTRAS = {"transformers": "torch", "onnxruntime-gpu": "cuda,cudnn"}

# Python packages that apt installs on each Ubuntu release (version as pip sees it).
UBUNTU_PYTHON = {
    "jammy": {"numpy": "1.21.5", "typing-extensions": "3.10.0.2", "pyyaml": "5.4.1", "packaging": "21.3"},
    "noble": {"numpy": "1.26.4", "typing-extensions": "4.10.0", "pyyaml": "6.0.1", "packaging": "24.0"},
}
# apt packages (or package-name patterns) -> the Python distributions they bring.
APT_BRINGS = {
    r"ros-\w+-(ros-base|ros-core|rclpy)": ("numpy", "pyyaml", "packaging"),
    r"ros-(kilted|rolling)-(ros-base|ros-core|rclpy)": ("typing-extensions",),  # rclpy needs it from Kilted on
    r"ros-\w+-cv-bridge": ("numpy",),
    r"python3-opencv": ("numpy",),
    r"python3-numpy": ("numpy",),
    r"python3-yaml": ("pyyaml",),
    r"python3-typing-extensions": ("typing-extensions",),
}
# Compiled apt modules (cv2, cv_bridge) are built against these: a venv may not shadow them.
ABI_COUPLED = ("numpy",)


@dataclass(frozen=True)
class Base:
    ubuntu: str
    python: str
    platform: str  # uv's --python-platform
    provides: tuple[tuple[str, str], ...] = ()  # Python packages already in the image
    cuda_major: int | None = None
    problem: str = ""  # why this base cannot work, if it cannot


# Image name prefixes -> what they are. Longest matching prefix wins.
BASES = {
    "ros:kilted": Base("noble", "3.12", "x86_64-manylinux_2_39"),
    "ros:jazzy": Base("noble", "3.12", "x86_64-manylinux_2_39"),
    "ros:humble": Base("jammy", "3.10", "x86_64-manylinux_2_35"),
    # JetPack 6.1 (r36.4): CUDA 12.6, TensorRT 10.3 with bindings for the system Python 3.10.
    "nvcr.io/nvidia/l4t-jetpack:r36.4": Base("jammy", "3.10", "aarch64-manylinux_2_35",
                                             provides=(("tensorrt", "10.3.0"),), cuda_major=12),
    "nvcr.io/nvidia/l4t-jetpack:r36.3": Base("jammy", "3.10", "aarch64-manylinux_2_35",
                                             provides=(("tensorrt", "8.6.2"),), cuda_major=12),
    "nvcr.io/nvidia/l4t-jetpack:r36.2": Base("jammy", "3.10", "aarch64-manylinux_2_35",
                                             provides=(("tensorrt", "8.6.2"),), cuda_major=12),
    "dustynv/l4t-pytorch:r36.4": Base(
        "jammy", "3.10", "aarch64-manylinux_2_35", provides=(("torch", "2.4.0"), ("tensorrt", "10.3.0")),
        cuda_major=12,
        problem="sets PIP_INDEX_URL to a Jetson index host that no longer exists (jetson-containers "
                "#811, #1202, #1207): every pip install fails unless the Dockerfile overrides it"),
}


@dataclass
class PipStep:
    requirements: list[str] = field(default_factory=list)
    constraint_files: list[Path] = field(default_factory=list)
    index_url: str | None = None
    no_deps: bool = False


@dataclass
class Image:
    dockerfile: Path
    base_name: str
    base: Base | None
    apt: list[str]
    steps: list[PipStep]
    venv_site_packages: bool
    overrides_index: bool


@dataclass
class Result:
    image: Image
    errors: list[str] = field(default_factory=list)
    resolved: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    return norm(re.match(r"\s*([A-Za-z0-9_.-]+)", spec).group(1))


def pins_of(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*([^\s;#,]+)\s*$", line)
        if m:
            pins[norm(m.group(1))] = m.group(3)
    return pins


def read_requirements(path: Path) -> list[str]:
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith(("-r ", "-c ")):
            out += read_requirements(path.parent / line[3:].strip())
        elif line:
            out.append(line)
    return out


# -- reading a Dockerfile ---------------------------------------------------------------------------
def logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") and not current:
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    return [line for line in lines if line]


def substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), text)


def parse_dockerfile(path: Path, repo: Path) -> Image:
    variables: dict[str, str] = {}
    copies: dict[str, Path] = {}  # destination file name -> source in the repo
    base_name, apt, steps = "", [], []
    venv_site, overrides_index = False, False
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            variables.setdefault(name.strip(), default.strip().strip('"'))
        elif keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", rest):
                variables[name] = substitute(value.strip('"'), variables)
                overrides_index |= name == "PIP_INDEX_URL"
        elif keyword == "FROM":
            base_name = substitute(rest.split()[0], variables)
        elif keyword == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            for src in parts[:-1]:
                copies[Path(src).name] = repo / src
        elif keyword == "RUN":
            command = substitute(re.sub(r"--mount=\S+", "", rest), variables)
            venv_site |= bool(re.search(r"-m venv\b[^&;]*--system-site-packages", command))
            for part in re.split(r"&&|;|\|\|", command):
                words = shlex.split(part)
                if "apt-get" in words and "install" in words:
                    apt += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
                step = _pip_step(words, copies, repo)
                if step is not None:
                    steps.append(step)
    base = next((BASES[k] for k in sorted(BASES, key=len, reverse=True) if base_name.startswith(k)), None)
    return Image(path, base_name, base, apt, steps, venv_site, overrides_index)


def _pip_step(words: list[str], copies: dict[str, Path], repo: Path) -> PipStep | None:
    for i, word in enumerate(words):
        if Path(word).name in ("pip", "pip3") and words[i + 1:i + 2] == ["install"]:
            args = words[i + 2:]
            break
        if word == "-m" and words[i + 1:i + 3] == ["pip", "install"]:
            args = words[i + 3:]
            break
    else:
        return None
    step = PipStep()
    it = iter(args)
    for arg in it:
        if arg in ("-r", "--requirement"):
            step.requirements += read_requirements(_source(next(it), copies, repo))
        elif arg in ("-c", "--constraint"):
            step.constraint_files.append(_source(next(it), copies, repo))
        elif arg in ("-i", "--index-url"):
            step.index_url = next(it)
        elif arg in ("--extra-index-url", "--only-binary", "--no-binary", "-f", "--find-links"):
            next(it)
        elif arg == "--no-deps":
            step.no_deps = True
        elif not arg.startswith("-"):
            step.requirements.append(arg)
    return step


def _source(path: str, copies: dict[str, Path], repo: Path) -> Path:
    """The repository file behind a path inside the image (by its COPY), or a repository path."""
    return copies.get(Path(path).name, repo / path)


# -- checking ---------------------------------------------------------------------------------------
def apt_python(image: Image) -> dict[str, str]:
    """The Python distributions (and versions) that apt puts into the image."""
    if image.base is None:
        return {}
    names = set()
    implied = re.match(r"ros:(\w+)-", image.base_name)
    for package in image.apt + ([f"ros-{implied.group(1)}-ros-base"] if implied else []):
        for pattern, brings in APT_BRINGS.items():
            if re.fullmatch(pattern, package):
                names.update(brings)
    versions = UBUNTU_PYTHON[image.base.ubuntu]
    return {name: versions[name] for name in sorted(names)}


def check_image(image: Image, uv: str, *, verbose: bool = False) -> Result:
    result = Result(image)
    base = image.base
    if base is None:
        result.errors.append(f"unknown base image {image.base_name!r}: add it to BASES in {Path(__file__).name}")
        return result
    if base.problem and not image.overrides_index:
        result.errors.append(f"base image {image.base_name}: {base.problem}")
    if not image.steps:
        result.errors.append("no pip install found")
        return result

    system = apt_python(image)
    provided = dict(base.provides)
    external: dict[str, str] = {}
    requirements: list[str] = []
    constraint_lines: list[str] = []
    for step in image.steps:
        if step.index_url and step.index_url.rstrip("/") != PYPI:
            # Another index: not reachable from CI; its pinned packages count as installed.
            pins = pins_of(step.requirements)
            unpinned = [r for r in step.requirements if requirement_name(r) not in pins]
            if unpinned:
                result.errors.append(f"packages from {step.index_url} must be pinned (==): {', '.join(unpinned)}")
            external.update(pins)
            continue
        requirements += step.requirements
        for path in step.constraint_files:
            constraint_lines += read_requirements(path)

    own_pins = pins_of(constraint_lines)
    if image.venv_site_packages:
        locked = {n: v for n, v in system.items() if n in ABI_COUPLED}
        for name, version in locked.items():
            if own_pins.get(name) != version:
                result.errors.append(f"apt's {name} {version} is not pinned by the image's pip constraints "
                                     f"(found {own_pins.get(name)}): pip may shadow it with a build that apt's "
                                     "compiled modules (cv2, cv_bridge) cannot use")
    else:
        # Into the system interpreter: pip resolves as if the Debian packages were upgradable (it
        # takes the newest of everything it installs) and only then finds it cannot uninstall them.
        locked = {}
    pins = {**locked, **provided, **external}
    constraints = [f"{n}=={v}" for n, v in pins.items()] + constraint_lines
    pins_and_apt = {**system, **pins}  # stand-ins: what is in the image before pip runs

    first = _compile(uv, base, requirements, constraints, pins_and_apt, verbose)
    remaining = list(requirements)
    while isinstance(first, str):
        result.errors.append(f"pip set does not resolve for Python {base.python} on {base.platform}:\n{first}")
        # A requirement with no wheel at all hides what else is wrong: resolve once more without it.
        missing = re.search(r"Because (\S+?)(\[[^\]]*\])?==\S+ has no usable wheels and you require", first)
        dropped = [r for r in remaining if missing and requirement_name(r) == norm(missing.group(1))]
        if not dropped:
            result.resolved = {**pins}
            _static_checks(result, {**pins}, requirements)
            return result
        remaining = [r for r in remaining if r not in dropped]
        first = _compile(uv, base, remaining, constraints, pins_and_apt, verbose)
    if not image.venv_site_packages:
        _debian_packages_kept(result, uv, base, remaining, first, system, pins_and_apt, verbose)
    result.resolved = {**pins, **first}
    # The same versions, now with the extras the code needs at run time.
    runtime = [f"{n}[{RUNTIME_EXTRAS[n]}]=={v}" for n, v in first.items() if n in RUNTIME_EXTRAS]
    if runtime:
        second = _compile(uv, base, runtime, [f"{n}=={v}" for n, v in result.resolved.items()], pins_and_apt,
                          verbose)
        if isinstance(second, str):
            result.errors.append("the resolved versions do not work together at run time "
                                 f"({', '.join(runtime)} with what the image has):\n{second}")
        else:
            _static_checks(result, {**result.resolved, **second}, requirements)
            return result
    _static_checks(result, result.resolved, requirements)
    return result


def _debian_packages_kept(result: Result, uv: str, base: Base, requirements: list[str], chosen: dict[str, str],
                         system: dict[str, str], installed: dict[str, str], verbose: bool) -> None:
    """pip's picks with Debian's packages held at their versions: unsatisfiable means pip would try to
    replace one, which fails ("Cannot uninstall ..., RECORD file not found ... installed by debian")."""
    changed = {n: (system[n], v) for n, v in chosen.items() if n in system and v != system[n]}
    if not changed:
        return
    held = [f"{n}=={v}" for n, v in {**{n: v for n, v in chosen.items() if n not in system}, **system}.items()]
    again = _compile(uv, base, requirements, held, installed, verbose)
    if isinstance(again, str):
        listing = ", ".join(f"{n} {old} -> {new}" for n, (old, new) in sorted(changed.items()))
        result.errors.append(f"pip would replace Debian's packages in the system Python ({listing}), which it "
                             f"cannot uninstall; with them held, the newest versions pip picks conflict:\n{again}")


def _static_checks(result: Result, resolved: dict[str, str], requirements: list[str]) -> None:
    for req in requirements:
        if requirement_name(req) == "tensorrt":
            result.errors.append(f"{req!r}: the 'tensorrt' metapackage picks NVIDIA's current default CUDA "
                                 "(CUDA 13 since 10.13.3); name the flavour: tensorrt-cu12-bindings / -libs")
    for name, version in resolved.items():
        if name.startswith("tensorrt"):
            major = int(version.split(".")[0])
            if major not in SUPPORTED_TENSORRT_MAJORS:
                result.errors.append(f"{name} {version}: TensorRT {major} is not supported "
                                     f"(the backend supports major {SUPPORTED_TENSORRT_MAJORS})")
    parts = {n: v for n, v in resolved.items() if re.fullmatch(r"tensorrt-cu\d+-(libs|bindings)", n)}
    if len(set(parts.values())) > 1:
        result.errors.append(f"TensorRT libraries and bindings differ: {parts}")
    majors = cuda_majors(resolved, result.image.base.cuda_major if result.image.base else None)
    if len(set(majors.values())) > 1:
        groups = {m: sorted(n for n, mm in majors.items() if mm == m) for m in sorted(set(majors.values()))}
        listing = "; ".join(f"CUDA {m}: {', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''}"
                            for m, names in groups.items())
        result.errors.append(f"more than one CUDA major in one image: {listing}")


def cuda_majors(resolved: dict[str, str], base_major: int | None) -> dict[str, int]:
    """CUDA major of each CUDA-specific distribution (by its -cuNN suffix or its CUDA version)."""
    majors = {}
    if base_major is not None:
        majors["<base image>"] = base_major
    for name, version in resolved.items():
        m = re.search(r"-cu(\d+)(-|$)", name)
        if m:
            majors[name] = int(m.group(1))
        elif name in ("nvidia-cuda-runtime", "cuda-toolkit", "cuda-bindings"):
            majors[name] = int(version.split(".")[0])
    return majors


def _installed_stand_in(folder: Path, name: str, version: str) -> None:
    """A dependency-free wheel of ``name`` ``version`` (local label ``+image``, which sorts above the
    index's own build of that version): what the image already has, as the resolver sees it."""
    dist = f"{name.replace('-', '_')}-{version}+image"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}+image\n")
        whl.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: check_images\nRoot-Is-Purelib: true\n"
                     "Tag: py3-none-any\n")
        whl.writestr(f"{dist}.dist-info/RECORD", "")


def _compile(uv: str, base: Base, requirements: list[str], constraints: list[str], installed: dict[str, str],
             verbose: bool) -> dict[str, str] | str:
    """``{name: version}`` resolved by uv, or uv's error text."""
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp) / "installed"
        wheels.mkdir()
        for name, version in installed.items():
            _installed_stand_in(wheels, name, version)
        req, con = Path(tmp) / "requirements.in", Path(tmp) / "constraints.txt"
        req.write_text("\n".join(requirements) + "\n")
        con.write_text("\n".join(constraints) + "\n")
        cmd = [uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--native-tls",
               "--index-url", PYPI, "--find-links", str(wheels), "--no-config",
               "--python-version", base.python, "--python-platform", base.platform,
               "--only-binary", ":all:", "--constraint", str(con), str(req)]
        if verbose:
            print("  $", shlex.join(cmd), file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if len(lines) > 14:  # uv explains every backtrack; the first and last lines say what failed
            lines = [*lines[:4], f"  ... ({len(lines) - 10} lines of uv's derivation) ...", *lines[-6:]]
        text = "\n".join(lines)
        return "    " + text.replace("\n", "\n    ")
    return {name: version.removesuffix("+image") for name, version in pins_of(proc.stdout.splitlines()).items()}


def find_uv() -> str:
    here = Path(sys.executable).parent / "uv"
    found = str(here) if here.exists() else shutil.which("uv")
    if not found:
        sys.exit("uv not found: pip install uv (the [test] extra has it)")
    return found


def report(result: Result) -> str:
    image, base = result.image, result.image.base
    where = f"Python {base.python}, {base.platform}" if base else "unknown platform"
    keys = ("torch", "transformers", "tensorrt", "tensorrt-cu12-bindings", "tensorrt-cu12-libs", "numpy",
            "onnx", "onnxruntime-gpu", "typing-extensions")
    shown = ", ".join(f"{k} {result.resolved[k]}" for k in keys if k in result.resolved)
    head = f"{'ok  ' if result.ok else 'FAIL'} {image.dockerfile} ({image.base_name}; {where})"
    lines = [head, f"     {len(result.resolved)} packages: {shown}"]
    lines += [f"     - {error}" for error in result.errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dockerfiles", nargs="*", type=Path,
                        default=[Path("docker/Dockerfile"), Path("docker/Dockerfile.jetson")])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                        help="repository root the Dockerfiles' COPY paths are relative to")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the uv commands")
    args = parser.parse_args(argv)
    uv = find_uv()
    failed = 0
    for dockerfile in args.dockerfiles:
        result = check_image(parse_dockerfile(dockerfile, args.repo), uv, verbose=args.verbose)
        print(report(result), flush=True)
        failed += not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
