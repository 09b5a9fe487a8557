#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks (toolchain, libbpf, netfilter tools, npm packages),
# then builds. Idempotent: quick and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "natlens setup: $*" >&2; }

# command -> Debian package providing it
declare -A TOOLS=(
  [clang]=clang [bpftool]=bpftool [ip]=iproute2 [tc]=iproute2
  [iptables]=iptables [nft]=nftables [conntrack]=conntrack [pkg-config]=pkg-config
  [make]=make [gcc]=gcc
)
LIBS=(libbpf-dev libelf-dev zlib1g-dev
  # tools/chart-render, which renders deploy/helm/natlens in tests: Go + Sprig, helm's template engine
  golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v2-dev)

missing=()
for cmd in "${!TOOLS[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${TOOLS[$cmd]}")
done
for pkg in "${LIBS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -ne 0 ]; then
    log "missing Debian packages: ${missing[*]} — run as root (natlens needs root anyway: eBPF, namespaces, netfilter)"
    exit 1
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm ci only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm packages (npm ci)"
  if ! npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>/tmp/natlens-npm-ci.log; then
    # chdb lists prebuilt engines for other platforms as optional packages; a registry that lacks
    # them leaves them out of the lock file, and npm ci then refuses the lock. npm install skips
    # missing optional packages and installs the rest at the locked versions.
    if grep -q 'Missing: @chdb/' /tmp/natlens-npm-ci.log; then
      log "npm ci: this registry lacks chdb's other-platform packages; installing with npm install"
      npm install --no-audit --no-fund --loglevel=error >/dev/null
    else
      cat /tmp/natlens-npm-ci.log >&2
      exit 1
    fi
  fi
fi

bash scripts/build.sh
