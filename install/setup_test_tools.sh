#!/usr/bin/env bash
# Tools the test suite uses beside Python: Debian's headless Chromium, which renders report.html
# in a browser test. Idempotent; `make test` runs it. Without root and apt-get it says so, and
# that one test is skipped with the same reason.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "[setup_test_tools] chromium: $(command -v chromium || command -v chromium-browser)"
    exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup_test_tools] installing Debian's chromium (once, about a minute)"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; then
        echo "[setup_test_tools] chromium: $(command -v chromium)"
    else
        echo "[setup_test_tools] apt-get could not install chromium: the browser test of report.html will be skipped"
    fi
else
    echo "[setup_test_tools] chromium is not installed and cannot be installed here (needs root and apt-get):" \
         "the browser test of report.html will be skipped"
fi
