#!/usr/bin/env bash
# Scheduled retraining on new imagery: submit the whole pipeline to the cluster.
#
# Every stage is content-addressed: when no new imagery arrived the job finds the same
# dataset version, the same trained runs and evaluations, and does no work; new imagery makes
# a new dataset version (reusing unchanged shards, keeping every class on its seen/unseen
# side), new training runs, and a new comparison table in MLflow.
#
# Environment: RAY_ADDRESS (http://<head>:8265), RAY_AUTH_TOKEN (the cluster's token),
# CHIPMATCH_CONFIG (default conf/overhead_gpu.yaml), CHIPMATCH_OVERRIDES (extra key=value).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster's dashboard, e.g. http://head:8265}"
: "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN to the cluster's token (ray get-auth-token on the head)}"
CONFIG="${CHIPMATCH_CONFIG:-conf/overhead_gpu.yaml}"
# shellcheck disable=SC2086  # overrides are separate words on purpose
exec ray job submit --address "$RAY_ADDRESS" --working-dir . \
    --submission-id "chipmatch-retrain-$(date -u +%Y%m%dT%H%M%SZ)" \
    --runtime-env-json '{"excludes": [".venv/", ".git/", "chipmatch-data/", "mlruns/", "mlartifacts/", "*.db"]}' \
    -- python -m pipelines.cli run --config "$CONFIG" ${CHIPMATCH_OVERRIDES:-} --json
