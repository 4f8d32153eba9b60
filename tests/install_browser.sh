#!/bin/sh
# Headless Chromium and its WebDriver for the browser tests (tests/pipeline/outputs/test_webmap_browser.py).
# Idempotent and quiet: does nothing where both are installed; installs Debian's packages where the
# user is root with apt-get (CI runs `make test` so) unless MMLC_NO_BROWSER_INSTALL=1; else says so and
# exits 1 (the tests then skip with that reason).
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "${MMLC_NO_BROWSER_INSTALL:-0}" = 1 ]; then
    echo "chromium/chromedriver missing and MMLC_NO_BROWSER_INSTALL=1: the browser tests will be skipped" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium/chromedriver missing and not root with apt-get: the browser tests will be skipped" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; } \
    || { echo "apt-get could not install chromium chromium-driver: the browser tests will be skipped" >&2; exit 1; }
