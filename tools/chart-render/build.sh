#!/usr/bin/env bash
# Builds the chart renderer (tools/chart-render, a `helm template` stand-in) offline, in GOPATH mode
# against Debian's Go packages under /usr/share/gocode, and prints the binary's path. The binary is
# cached by a hash of its sources, so later calls only print the path.
#   NATLENS_CHART_RENDER_CACHE   cache directory (default node_modules/.cache/natlens-chart-render)
set -euo pipefail
SRC=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$SRC/../.." && pwd)
CACHE=${NATLENS_CHART_RENDER_CACHE:-$ROOT/node_modules/.cache/natlens-chart-render}
GOCODE=/usr/share/gocode
PKGS="golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v2-dev"

missing() {
  echo "chart-render: cannot build the chart renderer: $1." >&2
  echo "chart-render: install its Debian packages with: bash scripts/setup.sh  (or: apt-get install -y $PKGS)" >&2
  exit 3
}
command -v go >/dev/null 2>&1 || missing "no Go toolchain ('go' is not on PATH)"
[ -f "$GOCODE/src/github.com/Masterminds/sprig/functions.go" ] || missing "Sprig v3 is not in $GOCODE"
[ -f "$GOCODE/src/gopkg.in/yaml.v2/yaml.go" ] || missing "gopkg.in/yaml.v2 is not in $GOCODE"

hash=$(cat "$SRC/main.go" "$SRC/go.mod" "$SRC/build.sh" <(go version) | sha256sum | cut -c1-16)
bin="$CACHE/chart-render-$hash"
if [ ! -x "$bin" ]; then
  mkdir -p "$CACHE"
  # A private GOPATH per build: concurrent builds (a test and the script) must not share a tree.
  work=$(mktemp -d "$CACHE/build.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/src/natlens-chart-render"
  cp "$SRC/main.go" "$SRC/go.mod" "$work/src/natlens-chart-render/"
  if ! (cd "$work/src/natlens-chart-render" &&
        GO111MODULE=off GOPATH="$work:$GOCODE" GOCACHE="$CACHE/go-build" GOFLAGS= GOPROXY=off GOTOOLCHAIN=local \
        go build -trimpath -o "$work/chart-render" . >&2); then
    echo "chart-render: go build failed (Go $(go version | awk '{print $3}'), packages from $GOCODE)" >&2
    exit 4
  fi
  mv -f "$work/chart-render" "$bin"
  # Drop binaries of older sources.
  find "$CACHE" -maxdepth 1 -name 'chart-render-*' ! -name "chart-render-$hash" -delete 2>/dev/null || true
fi
echo "$bin"
