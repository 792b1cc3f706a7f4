#!/usr/bin/env bash
# The MLflow tracking server for chipmatch: runs and the model registry in a database,
# artifacts in object storage, and MLflow's basic-auth app in front of everything.
#
# All settings come from the environment (a Kubernetes secret, or an env file readable only
# by the service user); none lives in this repository:
#   MLFLOW_BACKEND_STORE_URI        runs + registry: postgresql://user:pw@db/mlflow (sqlite:////abs/path/mlflow.db on one machine)
#   MLFLOW_ARTIFACTS_DESTINATION    artifacts, proxied by the server: s3://bucket/mlartifacts, gs://..., or a path
#   MLFLOW_AUTH_DATABASE_URI        users and permissions (its own database: postgresql://..., sqlite:////abs/path/auth.db)
#   MLFLOW_AUTH_ADMIN_USERNAME      admin created on the first start (MLflow reads both itself)
#   MLFLOW_AUTH_ADMIN_PASSWORD
#   MLFLOW_FLASK_SERVER_SECRET_KEY  static CSRF key, the same on every replica (MLflow reads it itself)
#   MLFLOW_HOST (127.0.0.1)  MLFLOW_PORT (5000)  MLFLOW_WORKERS (2)
#   MLFLOW_ALLOWED_HOSTS            Host headers accepted besides localhost and private IPs,
#                                   e.g. mlflow.chipmatch.svc:5000 (DNS-rebinding protection)
#   MLFLOW_AUTH_DEFAULT_PERMISSION  what a signed-in user may do on others' experiments (READ)
#   MLFLOW_INSECURE_NO_AUTH=1       a throwaway server without authentication: loopback hosts only
# Clients (chipmatch stages) authenticate with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
#
#   MLFLOW_BACKEND_STORE_URI=sqlite:////srv/mlflow/mlflow.db MLFLOW_AUTH_DATABASE_URI=sqlite:////srv/mlflow/auth.db \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://chipmatch/mlartifacts infra/mlflow/server.sh   # + the secrets above
set -euo pipefail

fail() { echo "mlflow server: $*" >&2; exit 2; }
require() { [ -n "${!1:-}" ] || fail "set $1 ($2)"; }

require MLFLOW_BACKEND_STORE_URI "the database for runs and the registry, e.g. postgresql://user:pw@db/mlflow"
require MLFLOW_ARTIFACTS_DESTINATION "where artifacts are stored, e.g. s3://bucket/mlartifacts"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
ARGS=(--backend-store-uri "$MLFLOW_BACKEND_STORE_URI" --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
      --host "$HOST" --port "$PORT" --workers "${MLFLOW_WORKERS:-2}")
[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ] && ARGS+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
# Without the job-execution workers the server runs 2 processes (~0.5 GB) instead of 11 (~2.4 GB).
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

if [ "${MLFLOW_INSECURE_NO_AUTH:-0}" = "1" ]; then
    case "$HOST" in
        127.0.0.1|localhost|::1) ;;
        *) fail "MLFLOW_INSECURE_NO_AUTH=1 is only allowed on a loopback host (127.0.0.1, localhost, ::1), not $HOST: anyone who reaches the port could change runs and the registry" ;;
    esac
    echo "mlflow server: WITHOUT authentication on $HOST:$PORT (MLFLOW_INSECURE_NO_AUTH=1)" >&2
    exec mlflow server "${ARGS[@]}"
fi

require MLFLOW_AUTH_DATABASE_URI "the database for users and permissions, e.g. postgresql://user:pw@db/mlflow_auth"
require MLFLOW_AUTH_ADMIN_USERNAME "the admin user created on the first start"
require MLFLOW_AUTH_ADMIN_PASSWORD "from a secret; MLflow ships no default admin password"
require MLFLOW_FLASK_SERVER_SECRET_KEY "a static random key for CSRF protection, e.g. openssl rand -hex 32"
PYTHON_BIN="$(dirname "$(command -v mlflow)")/python"
[ -x "$PYTHON_BIN" ] || PYTHON_BIN=python3
"$PYTHON_BIN" -c "import flask_wtf" 2>/dev/null \
    || fail "the basic-auth app needs Flask-WTF: pip install 'mlflow[auth]' in the server's environment"

# MLflow's auth app reads its database from an ini file only; the URI may hold a password, so
# the file is private to this user and lives outside the repository.
CONFIG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mlflow-auth.XXXXXX")"
chmod 700 "$CONFIG_DIR"
umask 077
cat > "$CONFIG_DIR/basic_auth.ini" <<EOF
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
EOF
export MLFLOW_AUTH_CONFIG_PATH="$CONFIG_DIR/basic_auth.ini"
echo "mlflow server: basic-auth on $HOST:$PORT" >&2
exec mlflow server --app-name basic-auth "${ARGS[@]}"
