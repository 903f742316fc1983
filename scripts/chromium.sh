#!/usr/bin/env bash
# Prints the path of a Chromium for the browser tests (tests/browser), installing Debian's
# chromium package when none is found (this needs root). Playwright drives it; browsers
# cannot be downloaded by Playwright itself on this network.
set -euo pipefail

for candidate in "${CLEARHOUSE_TEST_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    echo "$candidate"
    exit 0
  fi
done
if [ "$(id -u)" != 0 ]; then
  echo "no Chromium found and not root: install Debian's chromium package" >&2
  exit 1
fi
echo "installing Debian's chromium package" >&2
DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
echo /usr/bin/chromium
