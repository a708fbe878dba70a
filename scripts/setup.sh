#!/usr/bin/env bash
# Set up everything edgecompile needs on a fresh Debian/Ubuntu machine, then build and verify
# the default model for this host. Idempotent: a second run installs nothing new.
#
# Python packages go into the project's own virtual environment, .venv/ (or $EDGECOMPILE_VENV),
# made without the machine's site-packages: a package installed by hand on the machine can then
# never stand in for one this project forgot to declare. The tests run with .venv/bin/python.
#
#   bash scripts/setup.sh            # install + build/verify the default model
#   bash scripts/setup.sh --no-demo  # install only
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_MODEL=${EDGECOMPILE_DEMO_MODEL:-fasternet_t0}
BASE_PYTHON=${BASE_PYTHON:-python3}   # the interpreter the environment is made from (3.11+)
VENV=${EDGECOMPILE_VENV:-.venv}
PYTHON="$VENV/bin/python"
APT_PACKAGES=(
  g++-aarch64-linux-gnu   # cross compiler for the arm64 presets' .so
  gcc-aarch64-linux-gnu
  pocl-opencl-icd         # an OpenCL device on the CPU, to run the mali/adreno kernels here
  ocl-icd-libopencl1
  clinfo
  qemu-user-static        # the emulated arm64 device (edgecompile device) ...
  debootstrap             # ... its Debian arm64 rootfs
  debian-archive-keyring  # ... verified against Debian's keys (not preinstalled on Ubuntu)
  fakeroot                # ... built without root when setup runs as a user
  python3-venv            # `python3 -m venv` with Debian's own Python (the project's .venv/)
  chromium                # the report's HTML opened in a real headless browser (tests) ...
  chromium-driver         # ... driven by Selenium
)

step() { printf '\n==> %s\n' "$*"; }

step "system packages: ${APT_PACKAGES[*]}"
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "all present"
fi

step "Python environment: $VENV (isolated from the machine's site-packages)"
if [ ! -x "$PYTHON" ]; then
  "$BASE_PYTHON" -m venv "$VENV"
else
  echo "present"
fi

step "Python packages into $VENV (pinned by constraints.txt)"
# torch first and exactly: if anything resolved it unpinned, pip would fetch a CUDA build.
"$PYTHON" -m pip install -q -c constraints.txt torch==2.13.0
"$PYTHON" -m pip install -q -c constraints.txt -e ".[dev]"
"$PYTHON" -m edgecompile --help >/dev/null

step "OpenCL runtime plug-in for the pip-installed TVM runtime (our C++; runs mali/adreno kernels on pocl)"
"$PYTHON" -c "from edgecompile.devices.opencl_runtime import ensure_built; print(ensure_built())"

step "emulated arm64 device: Debian arm64 rootfs + aarch64 TVM (cached; about a minute the first time)"
"$PYTHON" -m edgecompile device prepare

if [ "${1:-}" = "--no-demo" ]; then
  exit 0
fi

step "build and verify the default model for this host: $DEMO_MODEL"
artifact=$("$PYTHON" -m edgecompile build "$DEMO_MODEL" --target x86 -o build)
"$PYTHON" -m edgecompile verify "$artifact"
"$PYTHON" -m edgecompile info "$artifact"

printf '\nDone. For the edgecompile command: source %s/bin/activate   (tests: %s -m pytest -q)\n' "$VENV" "$PYTHON"
