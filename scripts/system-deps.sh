#!/usr/bin/env bash
# System packages the test suite uses: Debian's chromium (and its driver) for the HTML report's
# browser test, and redis-server for the Redis store tests (each test
# starts its own on 127.0.0.1). Installed only when missing and when we can (root with apt-get);
# otherwise the tests that need them say why they were skipped.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium chromium-driver)
command -v redis-server >/dev/null || need+=(redis-server)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "system-deps: cannot install ${need[*]} (not root or no apt-get); browser tests will skip" >&2
fi
