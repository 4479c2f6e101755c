#!/usr/bin/env bash
# Installs the third-party verifiers used by the cross-check tests into target/crosscheck/
# (idempotent; nothing global): Python `standardwebhooks`, Node `@mux/mux-node`, and the
# Python `aiosmtpd` SMTP server that the email channel's tests send to.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest="target/crosscheck"
mkdir -p "$dest"
if [ ! -f "$dest/py/.installed" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dest/py" "standardwebhooks==1.1.0"
  touch "$dest/py/.installed"
fi
if [ ! -f "$dest/py/.aiosmtpd-installed" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dest/py" "aiosmtpd==1.4.6"
  touch "$dest/py/.aiosmtpd-installed"
fi
if [ ! -f "$dest/node/.installed" ]; then
  mkdir -p "$dest/node"
  (cd "$dest/node" && npm install --silent --no-audit --no-fund --no-save "@mux/mux-node@15.3.0" >/dev/null)
  touch "$dest/node/.installed"
fi
