#!/usr/bin/env bash
# Scheduled retraining: submit `chipmatch retrain` to a Ray cluster through its job API and wait.
#
# `chipmatch retrain` ingests new imagery into a new dataset version, fine-tunes a challenger
# from the champion, gates it against the champion on a fixed benchmark, and only on success
# moves the registry alias and switches the live index (atomically); with no new imagery it
# does nothing. It holds the retrain lock on the storage root, so overlapping runs cannot
# happen even when two schedules fire.
#
# Environment:
#   RAY_ADDRESS            the cluster's dashboard / job API, e.g. http://chipmatch-head-svc:8265
#   RAY_AUTH_TOKEN         the cluster's token (Ray token authentication; RAY_AUTH_MODE=token is set here)
#   CHIPMATCH_CONFIG       default conf/overhead_gpu.yaml
#   CHIPMATCH_OVERRIDES    extra key=value words (storage.root=..., tracking.uri=...)
#   CHIPMATCH_STAGE        default retrain (`run` re-runs the whole pipeline instead)
#   CHIPMATCH_WORKING_DIR  code uploaded with the job (default: this checkout); empty: use the
#                          code installed in the cluster's image
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster's dashboard, e.g. http://head:8265}"
: "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN to the cluster's token (ray get-auth-token on the head)}"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
CONFIG="${CHIPMATCH_CONFIG:-conf/overhead_gpu.yaml}"
STAGE="${CHIPMATCH_STAGE:-retrain}"
SUBMIT=(ray job submit --address "$RAY_ADDRESS" --submission-id "chipmatch-$STAGE-$(date -u +%Y%m%dT%H%M%SZ)")
WORKING_DIR="${CHIPMATCH_WORKING_DIR-.}"
if [ -n "$WORKING_DIR" ]; then
    SUBMIT+=(--working-dir "$WORKING_DIR"
             --runtime-env-json '{"excludes": [".venv/", ".git/", "chipmatch-data/", "mlruns/", "mlartifacts/", "*.db", "*.env"]}')
fi
# shellcheck disable=SC2086  # overrides are separate words on purpose
exec "${SUBMIT[@]}" -- python -m pipelines.cli "$STAGE" --config "$CONFIG" ${CHIPMATCH_OVERRIDES:-} --json
