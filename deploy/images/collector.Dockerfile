# natlens collector image: node runtime + natlens (dist/) + production dependencies, chdb (the
# embedded ClickHouse engine, clickhouse.mode=embedded) included. No BPF object, no libbpf: the
# collector captures nothing.
#
#   docker build -f deploy/images/collector.Dockerfile -t ghcr.io/natlens/natlens-collector:0.1.0 .

FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
# npm ci, with scripts/setup.sh's fallback for registries lacking chdb's other-platform packages.
RUN npm ci --no-audit --no-fund --loglevel=error 2>/tmp/npm-ci.log \
 || { grep -q 'Missing: @chdb/' /tmp/npm-ci.log && npm install --no-audit --no-fund --loglevel=error; } \
 || { cat /tmp/npm-ci.log >&2; exit 1; }
COPY . .
# Only the TypeScript half of scripts/build.sh: the generated sources (record layout, protobuf
# types) are committed, and the native half (clang, the build host's BTF) serves only the agent.
RUN npm run build:ts
RUN npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
WORKDIR /opt/natlens
COPY --from=build /src/package.json ./package.json
COPY --from=build /src/bin/natlens ./bin/natlens
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/node_modules ./node_modules
RUN node bin/natlens collector --help >/dev/null \
 && mkdir -p /var/lib/natlens && chown 65532:65532 /var/lib/natlens
# Not root; the chart runs it with the same ids and a data volume at /var/lib/natlens.
USER 65532:65532
EXPOSE 7070
ENTRYPOINT ["node", "/opt/natlens/bin/natlens"]
CMD ["collector", "--listen", "0.0.0.0:7070", "--data", "/var/lib/natlens"]
