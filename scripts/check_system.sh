#!/usr/bin/env bash
# The system packages `make bench` and `make test` need beyond Python's: one line each for what is missing.
# (The emulated board's cross toolchain and QEMU come from `make emu-device`; chromium from install_browser.sh.)
missing=()
command -v g++ >/dev/null 2>&1 || missing+=("g++ (TVM links every compiled model with it: apt-get install g++)")
"${PYTHON:-python3}" -c "import venv, ensurepip" >/dev/null 2>&1 \
  || missing+=("python3-venv (make creates .venv with it: apt-get install python3-venv)")
"${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1 \
  || missing+=("Python >= 3.10 (found $("${PYTHON:-python3}" --version 2>&1))")
if [ ${#missing[@]} -gt 0 ]; then
  for m in "${missing[@]}"; do echo "missing system package: $m" >&2; done
  exit 1
fi
