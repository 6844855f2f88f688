#!/usr/bin/env bash
# Creates the local secrets compose.yaml reads (once; existing files are kept).
# They live in deploy/compose/secrets/, which git ignores.
set -euo pipefail
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
if [ ! -s secrets/grafana-admin-password ]; then
    python3 -c 'import secrets; print(secrets.token_urlsafe(24))' > secrets/grafana-admin-password
    # Readable inside the container (Grafana runs as uid 472); the folder stays private.
    chmod 0644 secrets/grafana-admin-password
    echo "created deploy/compose/secrets/grafana-admin-password"
fi
