#!/usr/bin/env bash
# System packages the test suite uses: Debian's chromium (and its driver) for the HTML report's
# browser test, redis-server for the Redis store tests (each test
# starts its own on 127.0.0.1), and Node.js with npm for the gateway's Node test, whose openai
# npm package (pinned by examples/node/package-lock.json) is installed with npm ci. Installed only
# when missing and when we can (root with apt-get); otherwise the tests that need them say why
# they were skipped.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium chromium-driver)
command -v redis-server >/dev/null || need+=(redis-server)
command -v npm >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "system-deps: cannot install ${need[*]} (not root or no apt-get); their tests will skip" >&2
  fi
fi
node_example="$(dirname "$0")/../examples/node"
if command -v npm >/dev/null && [ ! -f "$node_example/node_modules/openai/package.json" ]; then
  npm ci --prefix "$node_example" --no-audit --no-fund >/dev/null \
    || echo "system-deps: npm ci failed (no registry?); the Node test will skip" >&2
fi
