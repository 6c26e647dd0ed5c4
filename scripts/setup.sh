#!/usr/bin/env bash
# Set up worldstream on a fresh Debian machine: system libraries for headless OpenGL,
# a virtualenv, the CPU torch wheel, then the package with all extras.
set -euo pipefail
VENV=${1:-.venv}
PY=${PYTHON:-python3}

need_apt=()
# Headless OpenGL through EGL (Mesa llvmpipe on a CPU).
for pkg in libegl1 libgl1-mesa-dri libegl-mesa0; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
# Debian's Chromium for the browser test of `worldstream play` (driven by Playwright; never `playwright install`).
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# NOTE the CPU wheel first: a plain `torch` requirement pulls a multi-GB CUDA build.
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e ".[text,serve,train,dev]"
