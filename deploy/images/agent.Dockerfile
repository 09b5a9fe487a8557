# natlens agent image: node runtime + natlens (dist/) + the libbpf CLI natlens-probe + the
# precompiled BPF object. Production dependencies only, and without chdb: the embedded ClickHouse
# engine (~hundreds of MB) is the collector's; the agent never imports it.
#
#   docker build -f deploy/images/agent.Dockerfile -t ghcr.io/natlens/natlens-agent:0.1.0 .
#
# The BPF object is CO-RE: vmlinux.h is generated from the build host's BTF (any BTF kernel will do),
# and the object relocates against the node's kernel at load time. Pass another BTF file with
# --build-arg VMLINUX_BTF=... when the build host has none at /sys/kernel/btf/vmlinux.
# amd64 only: native/Makefile compiles the BPF object for __TARGET_ARCH_x86.

# node:20 on Debian bookworm: the project needs Node >= 20 (bookworm's own nodejs is 18), and the
# runtime stage below has the same Debian, so natlens-probe links against the libbpf it was built with.
FROM node:20-bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang bpftool libbpf-dev libelf-dev zlib1g-dev \
      make gcc libc6-dev pkg-config ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
# npm ci; when the registry lacks chdb's other-platform packages the lock is refused, and
# npm install (same locked versions) is the fallback, as in scripts/setup.sh.
RUN npm ci --no-audit --no-fund --loglevel=error 2>/tmp/npm-ci.log \
 || { grep -q 'Missing: @chdb/' /tmp/npm-ci.log && npm install --no-audit --no-fund --loglevel=error; } \
 || { cat /tmp/npm-ci.log >&2; exit 1; }
COPY . .
ARG VMLINUX_BTF=/sys/kernel/btf/vmlinux
# The repo's build: native/ (BPF object, natlens-probe) into dist/native/, then the TypeScript.
RUN VMLINUX_BTF="$VMLINUX_BTF" bash scripts/build.sh
# Production dependencies only, then drop the collector's embedded engine.
RUN npm prune --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/chdb node_modules/@chdb

FROM node:20-bookworm-slim
# libbpf1/libelf1/zlib1g: natlens-probe's shared libraries. iproute2: the agent lists the node's
# interfaces with `ip -json`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libbpf1 libelf1 zlib1g iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/natlens
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/bin/natlens ./bin/natlens
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/dist/native/natlens-probe /src/dist/native/natlens.bpf.o ./dist/native/
COPY --from=build /src/node_modules ./node_modules
# Fails the build if the agent's CLI needs chdb (or anything pruned) just to start.
RUN node bin/natlens agent --help >/dev/null
# root, tc and netlink: see deploy/helm/natlens/templates/agent-daemonset.yaml.
ENTRYPOINT ["node", "/opt/natlens/bin/natlens"]
CMD ["agent"]
