#!/usr/bin/env bash
# Install headless Chromium for the report's browser test (tests/test_figures.py).
# Idempotent, and never fails the set-up: without Chromium that one test is
# skipped with a message saying so.
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
( $SUDO apt-get update -qq && \
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium ) \
  >/dev/null 2>&1 || echo "setup_browser: could not install chromium; the browser test will be skipped" >&2
exit 0
