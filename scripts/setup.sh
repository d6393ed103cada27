#!/usr/bin/env bash
# One-time machine setup, idempotent: Debian packages, the pinned cargo-pgrx, pgrx init.
set -euo pipefail
PGRX_VERSION=0.18.0
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl
          libclang-dev clang sudo pkg-config libssl-dev postgresql-15-plpgsql-check
          chromium chromium-driver)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts a default cluster on 5432; the project runs its own clusters and needs none.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 *main .*online'; then
    pg_ctlcluster 15 main stop || true
fi

if [ "$(cargo pgrx --version 2>/dev/null || true)" != "cargo-pgrx $PGRX_VERSION" ]; then
    echo "setup: installing cargo-pgrx $PGRX_VERSION (takes several minutes, once)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
if ! grep -qs "^pg15 = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    cargo pgrx init --pg15 "$PG_CONFIG"
fi

# Kubernetes manifests are validated against the real schemas (PyPI kubernetes-validate).
if ! command -v kubernetes-validate >/dev/null || [ "$(kubernetes-validate --version 2>/dev/null)" != "1.37.0" ]; then
    python3 -m pip install -q --root-user-action=ignore "kubernetes-validate==1.37.0"
fi

# The Stripe tests run against PyPI localstripe, a fake Stripe API server started per test.
if ! python3 -m pip show localstripe 2>/dev/null | grep -qx "Version: 1.15.10" || ! command -v localstripe >/dev/null; then
    python3 -m pip install -q --root-user-action=ignore "localstripe==1.15.10"
fi

# The delivery tests send email to PyPI aiosmtpd, a real SMTP server started per test
# (tests/src/smtp.rs runs it with python3).
if ! python3 -m pip show aiosmtpd 2>/dev/null | grep -qx "Version: 1.4.6"; then
    python3 -m pip install -q --root-user-action=ignore "aiosmtpd==1.4.6"
fi
