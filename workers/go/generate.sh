#!/usr/bin/env bash
# Regenerates the Go stubs in gen/ from proto/tideflow/api/v1 (the public API), with the
# plugin versions go.mod pins as tools. `generate.sh --check` generates into a temporary
# folder instead and fails when the committed stubs differ (CI runs it through make).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"
GOBIN="$here/bin" go install tool
cd "$root"
buf="$root/node_modules/.bin/buf"
if [[ "${1:-}" != "--check" ]]; then
    rm -rf workers/go/gen
    "$buf" generate --template workers/go/buf.gen.yaml --path proto/tideflow/api/v1
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#out: workers/go/gen#out: $tmp/gen#" workers/go/buf.gen.yaml > "$tmp/buf.gen.yaml"
"$buf" generate --template "$tmp/buf.gen.yaml" --path proto/tideflow/api/v1
if ! diff -r "$tmp/gen" workers/go/gen >/dev/null; then
    diff -r "$tmp/gen" workers/go/gen | head -20 >&2
    echo "workers/go/gen is stale: run 'make proto' and commit the result" >&2
    exit 1
fi
