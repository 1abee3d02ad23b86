#!/usr/bin/env bash
# Make sure a headless Chromium is available for the HTML report test (tests/test_report.py).
# Idempotent: if a browser is already on PATH it only prints its path.
#
# Usage: scripts/install_browser.sh [--check]
#   (no option)  install Debian's `chromium` package when missing (needs root; otherwise prints the
#                exact command to run and exits 3)
#   --check      install nothing: exit 0 (and print the path) if a browser is there, 1 otherwise
#
# Why Debian's package and not a downloaded build: it comes from the same signed archive as the rest
# of the system, needs no network access beyond the package mirror, and works without a sandbox
# user namespace when started with --no-sandbox (as the test does, under root in CI containers).
# Only stdout's last line is meant for programs (the browser's path); messages go to stderr.
set -euo pipefail

CANDIDATES=(chromium chromium-browser google-chrome-stable google-chrome)

find_browser() {
    local c
    if [[ -n "${LAAQ_CHROMIUM:-}" && -x "${LAAQ_CHROMIUM}" ]]; then
        echo "${LAAQ_CHROMIUM}"
        return 0
    fi
    for c in "${CANDIDATES[@]}"; do
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

if path=$(find_browser); then
    echo "browser: $path" >&2
    echo "$path"
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    echo "no headless browser found (looked for ${CANDIDATES[*]})" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no chromium and no apt-get: install Chromium with your package manager, or set LAAQ_CHROMIUM" >&2
    exit 1
fi
if [[ "$(id -u)" != "0" ]]; then
    echo "chromium is missing and installing it needs root; run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium" >&2
    exit 3
fi
echo "installing Debian's chromium (one time) ..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
path=$(find_browser) || { echo "chromium was installed but is not on PATH" >&2; exit 1; }
echo "browser: $path" >&2
echo "$path"
