#!/usr/bin/env bash
# Fill wheels/ (gitignored) with what scripts/gpu-check.sh needs beside torch, for a GPU image that has
# only torch and no network: the package's own requirements (setup.py's install_requires, less torch and
# the ones no GPU check imports), torchao for the quantized-weights tests (TORCHAO_VERSION, default 0.17.0,
# the pair of the GPU image's torch 2.11) and the test runner, with every dependency, as wheels for CPython 3.12
# on x86-64 Linux (manylinux). Run it here, where the package registry is reachable; gpu-check.sh
# installs from wheels/ with --no-index whatever the image lacks. Kept under 64 MiB, so the wheels
# travel with the checkout.
#   scripts/gpu-wheels.sh                 # PYTHON_VERSION=3.12 PLATFORM_TAGS="..." to target another image
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
dest=wheels
limit_mib=64
pyver=${PYTHON_VERSION:-3.12}
torchao_version=${TORCHAO_VERSION:-0.17.0}
platforms=${PLATFORM_TAGS:-"manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64"}

# The requirement lines, read from setup.py so the version bounds live in one place. Left out: torch
# (the image's own CUDA build), opencv-python-headless (50 MB: the image codec's GPU test needs it and
# the images carry it; without it gpu-check reports that test as failed), pillow and setuptools (no
# GPU check imports them).
requirements=$("$py" - <<'EOF'
import ast
import re

tree = ast.parse(open("setup.py").read())
call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
kw = {k.arg: k.value for k in call.keywords}
install = ast.literal_eval(kw["install_requires"])
extras = {ast.literal_eval(k): v for k, v in zip(kw["extras_require"].keys, kw["extras_require"].values)}
test = ast.literal_eval(extras["test"])
skip = {"torch", "opencv-python-headless", "pillow", "setuptools"}
name = lambda req: re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()
wanted = [r for r in install if name(r) not in skip] + [r for r in test if name(r) in {"pytest", "hypothesis"}]
print("\n".join(wanted))
EOF
)
requirements+=$'\n'"torchao==$torchao_version"

rm -rf "$dest"
mkdir -p "$dest"
printf '%s\n' "$requirements" >"$dest/requirements.txt"
echo "gpu-wheels: for CPython $pyver x86-64 manylinux:"
sed 's/^/  /' "$dest/requirements.txt"
platform_args=()
for tag in $platforms; do platform_args+=(--platform "$tag"); done
"$py" -m pip download -q --disable-pip-version-check --only-binary=:all: --implementation cp \
  --python-version "$pyver" "${platform_args[@]}" -d "$dest" -r "$dest/requirements.txt"

bytes=$(du -cb "$dest"/*.whl | tail -n 1 | cut -f 1)
echo "gpu-wheels: $(find "$dest" -name '*.whl' | wc -l) wheels, $((bytes / 1048576)) MiB in $dest/ (the largest:)"
# shellcheck disable=SC2012  # plain file names
ls -S "$dest" | head -n 5 | sed 's/^/  /'
if [ "$bytes" -ge $((limit_mib * 1048576)) ]; then
  echo "gpu-wheels: over the ${limit_mib} MiB that travel with the checkout" >&2
  exit 1
fi
