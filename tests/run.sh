#!/usr/bin/env bash
# Set up (first run only), lint, and run the test suite. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/../pipelines/env.sh"
ruff check .
ruff format --check .
exec python -m pytest "$@"
