#!/usr/bin/env bash
# Re-create service/static/swagger-ui/ from the npm package swagger-ui-dist, pinned below.
#
# Why vendored: FastAPI's default /docs page loads Swagger UI from a CDN and is blank on a
# machine without internet. service/docs_ui.py serves these files from our own package instead.
#
# Reproducible: the exact version and the registry's sha512 integrity of its tarball are pinned
# here; the script refuses a tarball that does not match. Only the files the /docs page needs
# (plus the licence texts) are copied, to keep the wheel small.
#
# To upgrade: set SWAGGER_UI_VERSION to the new 5.x release, run with UPDATE_INTEGRITY=1 once
# (it prints the registry's integrity and writes nothing), paste it into SWAGGER_UI_INTEGRITY,
# run again, then run tests/test_docs_offline.py.
#
# Needs: npm (with the npm registry reachable), tar, python3.
set -euo pipefail

SWAGGER_UI_VERSION=5.35.0
SWAGGER_UI_INTEGRITY=sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==

# What we keep from the package (paths inside its tarball's package/ folder).
FILES=(
  swagger-ui-bundle.js
  swagger-ui-bundle.js.LICENSE.txt
  swagger-ui.css
  favicon-32x32.png
  LICENSE
  NOTICE
)

cd "$(dirname "$0")/.."
DEST=service/static/swagger-ui

if [ "${UPDATE_INTEGRITY:-0}" = 1 ]; then
  npm view "swagger-ui-dist@${SWAGGER_UI_VERSION}" dist.integrity
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent --ignore-scripts "swagger-ui-dist@${SWAGGER_UI_VERSION}" >/dev/null)
tgz="$tmp/swagger-ui-dist-${SWAGGER_UI_VERSION}.tgz"
[ -f "$tgz" ] || { echo "vendor_swagger_ui: npm pack produced no $tgz" >&2; exit 1; }

got="sha512-$(python3 -c 'import base64,hashlib,sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1],"rb").read()).digest()).decode())' "$tgz")"
if [ "$got" != "$SWAGGER_UI_INTEGRITY" ]; then
  echo "vendor_swagger_ui: integrity mismatch for swagger-ui-dist@${SWAGGER_UI_VERSION}" >&2
  echo "  expected $SWAGGER_UI_INTEGRITY" >&2
  echo "  got      $got" >&2
  exit 1
fi

mkdir "$tmp/x"
tar -xzf "$tgz" -C "$tmp/x"
ver=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$tmp/x/package/package.json")
[ "$ver" = "$SWAGGER_UI_VERSION" ] || { echo "vendor_swagger_ui: tarball says version $ver" >&2; exit 1; }

rm -rf "$DEST"
mkdir -p "$DEST"
for f in "${FILES[@]}"; do
  install -m 0644 "$tmp/x/package/$f" "$DEST/$f"
done
printf '%s\n' "$SWAGGER_UI_VERSION" > "$DEST/VERSION"

echo "vendor_swagger_ui: swagger-ui-dist@${SWAGGER_UI_VERSION} -> $DEST ($(du -sh "$DEST" | cut -f1))"
