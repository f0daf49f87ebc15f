#!/usr/bin/env bash
# Lint template.yaml offline: cfn-lint, then `sam validate --lint`. Exits non-zero on any finding.
#
# aws-sam-cli pins an older boto3 than moto wants, so the two tools live in their own virtual
# environment, .cache/sam-venv (EDGEFORGE_SAM_VENV), created on the first run and reused after.
#   scripts/lint_template.sh               set the venv up if needed, then lint
#   scripts/lint_template.sh --setup-only  only make sure the venv exists (exit 3 if it cannot)
# No AWS account is used: the region and credentials are dummies, and the metadata service is off.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${EDGEFORGE_SAM_VENV:-.cache/sam-venv}"
PY="${PYTHON:-python3}"
log() { printf '[lint_template] %s\n' "$*" >&2; }

if [[ ! -x "$VENV/bin/sam" || ! -x "$VENV/bin/cfn-lint" ]]; then
  log "creating $VENV with aws-sam-cli and cfn-lint (first run: a minute or two)"
  if ! { "$PY" -m venv "$VENV" \
         && "$VENV/bin/python" -m pip install -q --disable-pip-version-check aws-sam-cli cfn-lint; }; then
    log "could not create $VENV (no python3 venv module, or no package index reachable)"
    exit 3
  fi
fi
[[ "${1:-}" == "--setup-only" ]] && exit 0

export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
export AWS_EC2_METADATA_DISABLED=true SAM_CLI_TELEMETRY=0
unset AWS_PROFILE
log "cfn-lint $("$VENV/bin/cfn-lint" --version | awk '{print $2}')"
"$VENV/bin/cfn-lint" template.yaml
log "sam validate --lint ($("$VENV/bin/sam" --version))"
"$VENV/bin/sam" validate --lint --template-file template.yaml
log "template.yaml: no findings"
