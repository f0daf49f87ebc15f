#!/usr/bin/env bash
# The main job, end to end on this machine (no AWS account, no Docker): set up, then run the
# local demo — see README.md ("Quick start").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/edgeforge demo "$@"
