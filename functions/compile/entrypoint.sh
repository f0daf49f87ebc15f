#!/bin/sh
# The compile image's entry point: one image, two ways to run it.
#   entrypoint.sh batch                          an AWS Batch / Fargate job (functions/compile/batch.py)
#   entrypoint.sh functions.compile.app.lambda_handler   Lambda (the base image's entry point)
set -e
if [ "$1" = "batch" ]; then
  shift
  exec python3 -m functions.compile.batch "$@"
fi
exec /lambda-entrypoint.sh "$@"
