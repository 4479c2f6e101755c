#!/usr/bin/env bash
# The test command (README → "Quick start", command 2). Installs what the cross-checks need, then
# runs every test: unit, integration (real daemon over HTTP on 127.0.0.1), and doc tests.
# (Benchmarks are not tests: run them with `cargo bench`, see the README.)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
if [ -x tests/crosscheck/setup.sh ]; then
  tests/crosscheck/setup.sh
fi
cargo test --locked "$@"
