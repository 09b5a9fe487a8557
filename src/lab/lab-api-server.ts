// The lab as a Kubernetes API server: serves the running lab's Nodes, Pods, Services and
// EndpointSlices through src/k8s/api-server.ts, and turns every change of the lab's state file
// (natlens lab patch, terminate, add-pod, ...) into watch events, so natlens collectors and agents
// can watch the lab exactly as they watch a cluster (--kubeconfig pointing at the file written here).

import { watch as fsWatch, type FSWatcher, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname } from 'node:path';
import { stringify } from 'yaml';
import { KubeApiServer, ResourceStore, type StoreEvent } from '../k8s/api-server.js';
import { describeError, NatlensError, UsageError } from '../util/errors.js';
import { syncLabObjects } from './lab-kube-objects.js';
import { DEFAULT_PREFIX, STATE_DIR, statePath } from './topology.js';
import type { LabState } from './types.js';

export const DEFAULT_API_LISTEN = '127.0.0.1:6443';
export const KUBECONFIG_CONTEXT = 'natlens-lab';

export function labKubeconfigPath(prefix: string): string {
  return `${STATE_DIR}/lab-${prefix}.kubeconfig`;
}

export interface LabApiServerOptions {
  prefix?: string;
  /** host:port to serve on (default 127.0.0.1:6443; port 0 picks a free one). */
  listen?: string;
  /** Where to write the kubeconfig (default /run/natlens/lab-<prefix>.kubeconfig). */
  kubeconfigOut?: string;
  /** The lab state file to serve (default /run/natlens/lab-<prefix>.json). */
  stateFile?: string;
  /** Poll the state file this often, besides watching its directory (default 500 ms). */
  pollMs?: number;
  /** Require this bearer token (written into the kubeconfig). */
  token?: string;
  /** Structured log lines: {event:'lab-state-applied', changes}, {event:'lab-state-error', error}. */
  log?: (fields: Record<string, unknown>) => void;
}

export interface LabApiServer {
  url: string;
  kubeconfigPath: string;
  store: ResourceStore;
  server: KubeApiServer;
  /** Re-reads the state file now and applies what changed; returns the watch events produced. */
  reload(): StoreEvent[];
  /** Stops serving, stops watching the state file, removes the kubeconfig. */
  close(): Promise<void>;
}

/** "host:port", "[v6]:port" or ":port" (localhost). */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(listen.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new UsageError(`--listen must be HOST:PORT (like ${DEFAULT_API_LISTEN}), not "${listen}"`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

/** A kubeconfig for a plain-HTTP API server (client-node and kubectl need TLS verification off for http). */
export function labKubeconfig(url: string, token?: string): string {
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: KUBECONFIG_CONTEXT, cluster: { server: url, 'insecure-skip-tls-verify': true } }],
    users: [{ name: KUBECONFIG_CONTEXT, user: token ? { token } : {} }],
    contexts: [{ name: KUBECONFIG_CONTEXT, context: { cluster: KUBECONFIG_CONTEXT, user: KUBECONFIG_CONTEXT, namespace: 'default' } }],
    'current-context': KUBECONFIG_CONTEXT,
    preferences: {},
  });
}

export async function startLabApiServer(opts: LabApiServerOptions = {}): Promise<LabApiServer> {
  const prefix = opts.prefix ?? DEFAULT_PREFIX;
  const stateFile = opts.stateFile ?? statePath(prefix);
  const kubeconfigPath = opts.kubeconfigOut ?? labKubeconfigPath(prefix);
  const log = opts.log ?? (() => undefined);
  const { host, port } = parseListen(opts.listen ?? DEFAULT_API_LISTEN);

  let lastText = readStateText(stateFile);
  if (lastText === null) {
    throw new NatlensError(`no lab with prefix "${prefix}" is up (${stateFile} is missing; start one with: natlens lab up${prefix === DEFAULT_PREFIX ? '' : ` --prefix ${prefix}`})`);
  }
  const store = new ResourceStore();
  syncLabObjects(store, parseState(lastText, stateFile));
  const server = await KubeApiServer.start({ store, host, port, ...(opts.token ? { token: opts.token } : {}), watchTimeoutMs: 30 * 60_000 });

  let missingLogged = false;
  const reload = (): StoreEvent[] => {
    let text: string | null;
    try {
      text = readStateText(stateFile);
    } catch (err) {
      log({ event: 'lab-state-error', stateFile, error: describeError(err) });
      return [];
    }
    if (text === null) {
      // `lab down`: keep serving the last state (the cluster "as it was"), say so once.
      if (!missingLogged) log({ event: 'lab-state-missing', stateFile });
      missingLogged = true;
      return [];
    }
    missingLogged = false;
    if (text === lastText) return [];
    let state: LabState;
    try {
      state = parseState(text, stateFile);
    } catch (err) {
      log({ event: 'lab-state-error', stateFile, error: describeError(err) });
      return [];
    }
    lastText = text;
    const events = syncLabObjects(store, state);
    if (events.length) {
      log({ event: 'lab-state-applied', resourceVersion: store.resourceVersion, changes: events.map((e) => `${e.type} ${e.resource.resource}/${e.object.metadata.name}`) });
    }
    return events;
  };

  try {
    mkdirSync(dirname(kubeconfigPath), { recursive: true });
    writeFileSync(kubeconfigPath, labKubeconfig(server.url, opts.token), { mode: 0o600 });
  } catch (err) {
    await server.close();
    throw new NatlensError(`cannot write the kubeconfig ${kubeconfigPath}: ${describeError(err)}`, { cause: err });
  }

  // The lab replaces its state file atomically (rename), so watch the directory, not the file;
  // the poll catches what inotify misses (other filesystems, a directory created later).
  let watcher: FSWatcher | undefined;
  try {
    watcher = fsWatch(dirname(stateFile), (_type, name) => {
      if (name === null || name === basename(stateFile)) reload();
    });
    watcher.on('error', () => watcher?.close());
  } catch {
    watcher = undefined;
  }
  const poll = setInterval(reload, opts.pollMs ?? 500);

  return {
    url: server.url,
    kubeconfigPath,
    store,
    server,
    reload,
    async close() {
      clearInterval(poll);
      watcher?.close();
      await server.close();
      rmSync(kubeconfigPath, { force: true });
    },
  };
}

function readStateText(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new NatlensError(`cannot read the lab state ${file}: ${describeError(err)}`, { cause: err });
  }
}

function parseState(text: string, file: string): LabState {
  let state: LabState;
  try {
    state = JSON.parse(text) as LabState;
  } catch (err) {
    throw new NatlensError(`${file} is not valid JSON: ${describeError(err)}`, { cause: err });
  }
  if (!state || !Array.isArray(state.nodes) || !Array.isArray(state.pods) || !Array.isArray(state.services)) {
    throw new NatlensError(`${file} is not a lab state (no nodes, pods and services)`);
  }
  return state;
}
