#!/usr/bin/env bash
# Builds the BPF object, the native CLIs (natlens-probe, natlens-load), the generated record layout,
# then the TypeScript. make rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s -C native
node scripts/gen-proto.mjs
npx tsc -p tsconfig.json
