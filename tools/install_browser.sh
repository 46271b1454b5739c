#!/bin/sh
# Headless Chromium for the browser tests (tests/test_browser.py): Debian's `chromium` package,
# which Playwright drives through its executable path (Playwright never downloads a browser here).
# Never fails the build: where Chromium cannot be installed (no root/sudo, no apt, no network),
# it says why and the browser tests skip with the same reason.
# Usage: sh tools/install_browser.sh [PYTHON]   (PYTHON: the venv's python, to check Playwright)
set -u
PY=${1:-}

have_chromium() {
  for c in "${MLCWB_CHROMIUM:-}" chromium /usr/bin/chromium chromium-browser; do
    [ -n "$c" ] && command -v "$c" >/dev/null 2>&1 && return 0
  done
  return 1
}

if have_chromium; then
  echo "browser tests: chromium found ($(command -v chromium || echo "${MLCWB_CHROMIUM:-}"))"
else
  if [ "$(id -u)" = 0 ]; then SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
  else SUDO="none"
  fi
  if [ "$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "browser tests: chromium not found and cannot be installed here (needs root or" \
         "passwordless sudo, and apt-get); they will be skipped." \
         "Install Chromium yourself and set MLCWB_CHROMIUM=/path/to/chromium to run them."
  else
    echo "browser tests: installing Debian's chromium with apt-get (one-off, ~300 MB)"
    if $SUDO apt-get update -qq \
       && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
            chromium fonts-liberation >/dev/null; then
      echo "browser tests: $(chromium --version 2>/dev/null | head -n 1)"
    else
      echo "browser tests: apt-get could not install chromium; they will be skipped"
    fi
  fi
fi

if [ -n "$PY" ] && ! "$PY" -c "import playwright.sync_api" 2>/dev/null; then
  echo "browser tests: Playwright missing from $PY, installing it (no browser download)"
  "$PY" -m pip install -q "playwright>=1.45" \
    || echo "browser tests: could not install playwright; they will be skipped"
fi
exit 0
