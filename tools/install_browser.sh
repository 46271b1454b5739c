#!/bin/sh
# Headless Chromium for the browser tests (Debian's package; Playwright drives it, it downloads
# nothing itself). Without root or apt the browser tests skip and say why.
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || echo "could not install chromium; browser tests will be skipped"
else
  echo "chromium not found and cannot install it here (needs root + apt); browser tests will be skipped"
fi
exit 0
