// A small Kubernetes API server: the real list/watch protocol (resourceVersions, chunked JSON
// watch streams, 410 Expired for a resume point that left the history, field and label selectors,
// limit/continue, bookmarks, discovery) over an in-memory ResourceStore. Tests feed it recorded API
// responses and drive it through client-node's real informers; the lab serves its cluster through
// it so the collector and agents can watch the lab like a cluster. Read-only: GET only.

import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { K8sError } from './errors.js';
import { httpServerOptions, limitHttpServer, refuseUnexpectedBody } from '../util/http-limits.js';

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  creationTimestamp?: string;
  labels?: Record<string, string>;
  [field: string]: unknown;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [field: string]: unknown;
}

type FieldGetter = (o: KubeObject) => string;

export interface ResourceType {
  /** Plural, as in URLs ("pods"). */
  resource: string;
  singular: string;
  kind: string;
  listKind: string;
  group: string;
  version: string;
  /** "v1", "discovery.k8s.io/v1". */
  apiVersion: string;
  namespaced: boolean;
  shortNames: string[];
  /** The fields a fieldSelector may name (the apiserver refuses any other). */
  fields: Record<string, FieldGetter>;
}

const dig = (o: unknown, ...keys: string[]): unknown => keys.reduce<unknown>((x, k) => (x && typeof x === 'object' ? (x as Record<string, unknown>)[k] : undefined), o);
const field = (...keys: string[]): FieldGetter => (o) => {
  const v = dig(o, ...keys);
  return v === undefined || v === null ? '' : String(v);
};
const META_FIELDS = { 'metadata.name': field('metadata', 'name'), 'metadata.namespace': field('metadata', 'namespace') };

function resourceType(group: string, kind: string, resource: string, namespaced: boolean, shortNames: string[], fields: Record<string, FieldGetter> = {}): ResourceType {
  return {
    resource,
    singular: kind.toLowerCase(),
    kind,
    listKind: `${kind}List`,
    group,
    version: 'v1',
    apiVersion: group ? `${group}/v1` : 'v1',
    namespaced,
    shortNames,
    fields: { ...META_FIELDS, ...fields },
  };
}

export const RESOURCE_TYPES: readonly ResourceType[] = [
  resourceType('', 'Pod', 'pods', true, ['po'], {
    'spec.nodeName': field('spec', 'nodeName'),
    'spec.restartPolicy': field('spec', 'restartPolicy'),
    'spec.schedulerName': field('spec', 'schedulerName'),
    'spec.serviceAccountName': field('spec', 'serviceAccountName'),
    'spec.hostNetwork': (o) => String(dig(o, 'spec', 'hostNetwork') === true),
    'status.phase': field('status', 'phase'),
    'status.podIP': field('status', 'podIP'),
    'status.nominatedNodeName': field('status', 'nominatedNodeName'),
  }),
  resourceType('', 'Service', 'services', true, ['svc'], { 'spec.clusterIP': field('spec', 'clusterIP'), 'spec.type': field('spec', 'type') }),
  resourceType('', 'Node', 'nodes', false, ['no'], { 'spec.unschedulable': (o) => String(dig(o, 'spec', 'unschedulable') === true) }),
  resourceType('', 'Namespace', 'namespaces', false, ['ns'], { 'status.phase': field('status', 'phase') }),
  resourceType('discovery.k8s.io', 'EndpointSlice', 'endpointslices', true, []),
];

/** The resource type named by kind ("Pod"), plural ("pods"), singular or short name. */
export function resourceTypeOf(name: string): ResourceType {
  const n = name.toLowerCase();
  const t = RESOURCE_TYPES.find((r) => r.resource === n || r.singular === n || r.shortNames.includes(n) || r.listKind.toLowerCase() === n);
  if (!t) throw new K8sError(`unknown resource "${name}" (known: ${RESOURCE_TYPES.map((r) => r.resource).join(', ')})`);
  return t;
}

// ------------------------------------------------------------------ selectors

export class SelectorError extends Error {}

type Requirement = { key: string; op: '=' | '!=' | 'in' | 'notin' | 'exists' | '!exists'; values: string[] };
export type Matcher = (o: KubeObject) => boolean;

/** Splits on commas outside parentheses ("a in (x,y),b=c"). */
function splitTerms(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out.map((t) => t.trim()).filter(Boolean);
}

export function parseLabelSelector(s: string): Matcher {
  const reqs: Requirement[] = splitTerms(s).map((term) => {
    let m = /^(!?)\s*([A-Za-z0-9][-A-Za-z0-9_./]*)$/.exec(term);
    if (m) return { key: m[2]!, op: m[1] ? '!exists' : 'exists', values: [] };
    m = /^([A-Za-z0-9][-A-Za-z0-9_./]*)\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)$/.exec(term);
    if (m) return { key: m[1]!, op: m[2] === '!=' ? '!=' : '=', values: [m[3]!] };
    m = /^([A-Za-z0-9][-A-Za-z0-9_./]*)\s+(in|notin)\s+\(([^)]*)\)$/.exec(term);
    if (m) return { key: m[1]!, op: m[2] as 'in' | 'notin', values: m[3]!.split(',').map((v) => v.trim()) };
    throw new SelectorError(`unable to parse requirement: invalid label selector term "${term}"`);
  });
  return (o) => {
    const labels = o.metadata.labels ?? {};
    return reqs.every((r) => {
      const has = Object.prototype.hasOwnProperty.call(labels, r.key);
      const v = labels[r.key];
      switch (r.op) {
        case 'exists': return has;
        case '!exists': return !has;
        case '=': return has && v === r.values[0];
        case '!=': return !has || v !== r.values[0];
        case 'in': return has && r.values.includes(v!);
        case 'notin': return !has || !r.values.includes(v!);
      }
    });
  };
}

export function parseFieldSelector(s: string, type: ResourceType): Matcher {
  const reqs = splitTerms(s).map((term) => {
    const m = /^([A-Za-z.]+)\s*(==|=|!=)\s*(.*)$/.exec(term);
    if (!m) throw new SelectorError(`invalid selector: '${s}'; can't understand '${term}'`);
    const get = type.fields[m[1]!];
    if (!get) throw new SelectorError(`field label not supported: ${m[1]}`);
    return { get, neg: m[2] === '!=', value: m[3]! };
  });
  return (o) => reqs.every((r) => (r.get(o) === r.value) !== r.neg);
}

// ------------------------------------------------------------------ store

export interface StoreEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  resource: ResourceType;
  /** The object after the change (the last state, with the deletion's resourceVersion, for DELETED). */
  object: KubeObject;
  /** The object before the change (null for ADDED): watches with selectors need both. */
  previous: KubeObject | null;
  rv: number;
}

export interface ListOptions {
  namespace?: string;
  labelSelector?: string;
  fieldSelector?: string;
}

function objKey(o: KubeObject): string {
  return o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name;
}

/** JSON with sorted keys: equality of objects regardless of how they were built. */
export function stableStringify(x: unknown): string {
  if (Array.isArray(x)) return `[${x.map(stableStringify).join(',')}]`;
  if (x && typeof x === 'object') {
    const o = x as Record<string, unknown>;
    return `{${Object.keys(o).filter((k) => o[k] !== undefined).sort().map((k) => `${JSON.stringify(k)}:${stableStringify(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(x);
}

/** Equal apart from what the server assigns on every write. */
export function sameObject(a: KubeObject, b: KubeObject): boolean {
  const strip = (o: KubeObject): unknown => ({ ...o, metadata: { ...o.metadata, resourceVersion: undefined, managedFields: undefined } });
  return stableStringify(strip(a)) === stableStringify(strip(b));
}

function kubeTime(d: Date = new Date()): string {
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/**
 * Objects by resource with one resourceVersion counter for all of them (like etcd's revision);
 * every write is an event kept in a bounded history that watches resume from.
 */
export class ResourceStore extends EventEmitter<{ event: [StoreEvent] }> {
  private rv: number;
  /** A watch may resume from any resourceVersion >= this (the history holds every later event). */
  private compactedRv: number;
  private readonly objects = new Map<string, Map<string, KubeObject>>();
  private history: StoreEvent[] = [];
  private readonly historyLimit: number;

  constructor(opts: { historyLimit?: number; resourceVersion?: number } = {}) {
    super();
    this.setMaxListeners(0);
    this.historyLimit = opts.historyLimit ?? 1000;
    this.rv = opts.resourceVersion ?? 1;
    this.compactedRv = this.rv;
  }

  get resourceVersion(): string {
    return String(this.rv);
  }

  /** The oldest resourceVersion a watch can still resume from. */
  get oldestResourceVersion(): string {
    return String(this.compactedRv);
  }

  /**
   * Loads a recorded List response (PodList, ...) as the state before any watch: items keep their
   * resourceVersions, no events. The history starts at the newest version loaded.
   */
  loadList(list: { kind?: string; metadata?: { resourceVersion?: string }; items?: KubeObject[] }): void {
    if (!list.kind) throw new K8sError('loadList: the list has no kind');
    const type = resourceTypeOf(list.kind);
    this.bump(Number(list.metadata?.resourceVersion ?? 0));
    this.load((list.items ?? []).map((o) => ({ ...o, kind: type.kind, apiVersion: type.apiVersion })));
  }

  /** Loads objects (with kind) without events, keeping their resourceVersions when they have one. */
  load(objects: KubeObject[]): void {
    for (const o of objects) {
      const type = resourceTypeOf(o.kind ?? '');
      const stored = this.normalize(type, o);
      const rv = Number(o.metadata.resourceVersion);
      if (Number.isInteger(rv) && rv > 0) {
        stored.metadata.resourceVersion = String(rv);
        this.bump(rv);
      } else stored.metadata.resourceVersion = String(++this.rv);
      this.bucket(type).set(objKey(stored), stored);
    }
    this.compactedRv = this.rv;
    this.history = [];
  }

  get(resource: string, namespace: string, name: string): KubeObject | undefined {
    const type = resourceTypeOf(resource);
    const o = this.bucket(type).get(type.namespaced ? `${namespace}/${name}` : name);
    return o ? structuredClone(o) : undefined;
  }

  /** Matching objects, sorted like etcd keys (namespace/name), as copies. */
  list(resource: string, opts: ListOptions = {}): KubeObject[] {
    const type = resourceTypeOf(resource);
    const match = this.matcher(type, opts);
    return [...this.bucket(type).entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, o]) => o)
      .filter(match)
      .map((o) => structuredClone(o));
  }

  /** Creates the object (kind set); throws if it exists. */
  create(obj: KubeObject): KubeObject {
    const type = resourceTypeOf(obj.kind ?? '');
    if (this.bucket(type).has(objKey(this.normalize(type, obj)))) throw new K8sError(`${type.resource} "${obj.metadata.name}" already exists`);
    return this.write(type, obj, 'ADDED').object;
  }

  /** Replaces the object; throws if it does not exist. */
  update(obj: KubeObject): KubeObject {
    const type = resourceTypeOf(obj.kind ?? '');
    if (!this.bucket(type).has(objKey(this.normalize(type, obj)))) throw new K8sError(`${type.resource} "${obj.metadata.name}" not found`);
    return this.write(type, obj, 'MODIFIED').object;
  }

  /** Creates or replaces; no event (null) when nothing but server-assigned fields would change. */
  put(obj: KubeObject): StoreEvent | null {
    const type = resourceTypeOf(obj.kind ?? '');
    const next = this.normalize(type, obj);
    const prev = this.bucket(type).get(objKey(next));
    if (prev) {
      // Server-assigned identity survives a replace unless the caller sets its own.
      next.metadata.uid = obj.metadata.uid ?? prev.metadata.uid;
      next.metadata.creationTimestamp = obj.metadata.creationTimestamp ?? prev.metadata.creationTimestamp;
      if (sameObject(prev, next)) return null;
    }
    return this.write(type, next, prev ? 'MODIFIED' : 'ADDED');
  }

  delete(resource: string, namespace: string, name: string): StoreEvent | null {
    const type = resourceTypeOf(resource);
    const key = type.namespaced ? `${namespace}/${name}` : name;
    const prev = this.bucket(type).get(key);
    if (!prev) return null;
    this.bucket(type).delete(key);
    const object = structuredClone(prev);
    object.metadata.resourceVersion = String(++this.rv);
    return this.record({ type: 'DELETED', resource: type, object, previous: prev, rv: this.rv });
  }

  /**
   * Applies a recorded watch event ({type, object}) keeping its resourceVersion when it is newer
   * than the store's, so a recorded stream replays with its recorded versions.
   */
  replay(event: { type: string; object: KubeObject }): StoreEvent | null {
    const type = resourceTypeOf(event.object.kind ?? '');
    const recorded = Number(event.object.metadata.resourceVersion);
    const useRv = Number.isInteger(recorded) && recorded > this.rv ? recorded : undefined;
    if (event.type === 'DELETED') {
      const key = objKey(this.normalize(type, event.object));
      const prev = this.bucket(type).get(key);
      if (!prev) return null;
      this.bucket(type).delete(key);
      const object = this.normalize(type, event.object);
      this.rv = useRv ?? this.rv + 1;
      object.metadata.resourceVersion = String(this.rv);
      return this.record({ type: 'DELETED', resource: type, object, previous: prev, rv: this.rv });
    }
    if (event.type !== 'ADDED' && event.type !== 'MODIFIED') return null;
    const prev = this.bucket(type).get(objKey(this.normalize(type, event.object)));
    return this.write(type, event.object, prev ? 'MODIFIED' : 'ADDED', useRv);
  }

  /** Every event after resourceVersion `rv`; null when some of them already left the history. */
  eventsAfter(rv: number): StoreEvent[] | null {
    if (rv < this.compactedRv) return null;
    return this.history.filter((e) => e.rv > rv);
  }

  /** Forgets the history: watches resuming from before now get 410 Expired (like etcd compaction). */
  compact(): void {
    this.history = [];
    this.compactedRv = this.rv;
  }

  matcher(type: ResourceType, opts: ListOptions): Matcher {
    const labels = opts.labelSelector ? parseLabelSelector(opts.labelSelector) : undefined;
    const fields = opts.fieldSelector ? parseFieldSelector(opts.fieldSelector, type) : undefined;
    const ns = type.namespaced ? opts.namespace : undefined;
    return (o) => (!ns || o.metadata.namespace === ns) && (!labels || labels(o)) && (!fields || fields(o));
  }

  private bucket(type: ResourceType): Map<string, KubeObject> {
    let b = this.objects.get(type.resource);
    if (!b) this.objects.set(type.resource, (b = new Map()));
    return b;
  }

  private bump(rv: number): void {
    if (Number.isInteger(rv) && rv > this.rv) this.rv = rv;
  }

  /** A stored copy with kind/apiVersion, namespace, uid and creationTimestamp filled in. */
  private normalize(type: ResourceType, obj: KubeObject): KubeObject {
    if (!obj.metadata?.name) throw new K8sError(`${type.kind} without metadata.name`);
    const o = structuredClone(obj);
    o.kind = type.kind;
    o.apiVersion = type.apiVersion;
    if (type.namespaced) o.metadata.namespace ||= 'default';
    else delete o.metadata.namespace;
    return o;
  }

  private write(type: ResourceType, obj: KubeObject, kind: 'ADDED' | 'MODIFIED', rv?: number): StoreEvent {
    const next = this.normalize(type, obj);
    const prev = this.bucket(type).get(objKey(next)) ?? null;
    next.metadata.uid ||= prev?.metadata.uid ?? randomUUID();
    next.metadata.creationTimestamp ||= prev?.metadata.creationTimestamp ?? kubeTime();
    this.rv = rv ?? this.rv + 1;
    next.metadata.resourceVersion = String(this.rv);
    this.bucket(type).set(objKey(next), next);
    return this.record({ type: kind, resource: type, object: next, previous: prev, rv: this.rv });
  }

  private record(e: StoreEvent): StoreEvent {
    this.history.push(e);
    while (this.history.length > this.historyLimit) this.compactedRv = this.history.shift()!.rv;
    this.emit('event', e);
    return e;
  }
}

// ------------------------------------------------------------------ HTTP server

export interface KubeApiServerOptions {
  store: ResourceStore;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 0 (any free port). */
  port?: number;
  /** When set, every request must carry "Authorization: Bearer <token>". */
  token?: string;
  /** BOOKMARK period for watches that allow them (default 60 s, like the apiserver's ~1 min). */
  bookmarkIntervalMs?: number;
  /** Longest a watch stays open when the client asks for no timeoutSeconds (default: unlimited). */
  watchTimeoutMs?: number;
  /** gitVersion reported by /version. */
  gitVersion?: string;
}

export interface RecordedRequest {
  method: string;
  /** Path and query, as received. */
  url: string;
  path: string;
  query: Record<string, string>;
  watch: boolean;
}

interface OpenWatch {
  res: ServerResponse;
  close: () => void;
}

interface Route {
  type: ResourceType;
  namespace?: string;
  name?: string;
}

export class KubeApiServer {
  readonly requests: RecordedRequest[] = [];
  private readonly watches = new Set<OpenWatch>();

  private constructor(
    private readonly server: Server,
    readonly store: ResourceStore,
    readonly url: string,
    readonly port: number,
    private readonly opts: KubeApiServerOptions,
  ) {}

  static async start(opts: KubeApiServerOptions): Promise<KubeApiServer> {
    const host = opts.host ?? '127.0.0.1';
    const server = limitHttpServer(createServer(httpServerOptions()));
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new K8sError(`cannot listen on ${host}:${opts.port ?? 0}: ${err.message}`, { cause: err })));
      server.listen(opts.port ?? 0, host, () => resolve());
    });
    const port = (server.address() as AddressInfo).port;
    const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
    const api = new KubeApiServer(server, opts.store, url, port, opts);
    server.on('request', (req, res) => api.handle(req, res));
    return api;
  }

  /** Open watch streams now. */
  openWatches(): number {
    return this.watches.size;
  }

  /**
   * Ends every open watch: by default abruptly (sockets destroyed, as when a connection drops);
   * graceful=true ends the streams cleanly, as the apiserver does at a watch timeout.
   */
  killWatches(opts: { graceful?: boolean } = {}): number {
    const n = this.watches.size;
    for (const w of [...this.watches]) {
      w.close();
      if (opts.graceful) w.res.end();
      else w.res.destroy();
    }
    return n;
  }

  async close(): Promise<void> {
    this.killWatches();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const u = new URL(req.url ?? '/', 'http://apiserver');
    const query = Object.fromEntries(u.searchParams.entries());
    const watch = query.watch === 'true' || query.watch === '1';
    this.requests.push({ method: req.method ?? 'GET', url: req.url ?? '/', path: u.pathname, query, watch });
    // Read-only: a body is never read, so one is refused rather than drained.
    if (refuseUnexpectedBody(req, res)) return;
    try {
      if (this.opts.token !== undefined && req.headers.authorization !== `Bearer ${this.opts.token}`) {
        return sendStatus(res, 401, 'Unauthorized', 'Unauthorized');
      }
      if (req.method !== 'GET') return sendStatus(res, 405, 'MethodNotAllowed', `the server does not allow this method on the requested resource (${req.method} ${u.pathname}): this API server is read-only`);
      const discovery = this.discovery(u.pathname);
      if (discovery !== undefined) return sendJson(res, 200, discovery);
      const route = parseRoute(u.pathname);
      if (!route) return sendStatus(res, 404, 'NotFound', 'the server could not find the requested resource');
      if (route.name !== undefined) return this.getOne(res, route);
      if (watch) return this.watch(res, route, query);
      return this.list(res, route, query);
    } catch (err) {
      if (err instanceof SelectorError) return sendStatus(res, 400, 'BadRequest', err.message);
      return sendStatus(res, 500, 'InternalError', `Internal error occurred: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  private getOne(res: ServerResponse, route: Route): void {
    const o = this.store.get(route.type.resource, route.namespace ?? '', route.name!);
    if (!o) {
      return sendStatus(res, 404, 'NotFound', `${route.type.resource}${route.type.group ? `.${route.type.group}` : ''} "${route.name}" not found`, {
        name: route.name, ...(route.type.group ? { group: route.type.group } : {}), kind: route.type.resource,
      });
    }
    sendJson(res, 200, o);
  }

  private list(res: ServerResponse, route: Route, q: Record<string, string>): void {
    const items = this.store.list(route.type.resource, { namespace: route.namespace, labelSelector: q.labelSelector, fieldSelector: q.fieldSelector });
    let rv = Number(this.store.resourceVersion);
    let start = '';
    if (q.continue) {
      let token: { rv?: unknown; start?: unknown };
      try {
        token = JSON.parse(Buffer.from(q.continue, 'base64url').toString('utf8')) as typeof token;
      } catch {
        return sendStatus(res, 400, 'BadRequest', 'continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)');
      }
      if (typeof token.rv !== 'number' || typeof token.start !== 'string') return sendStatus(res, 400, 'BadRequest', 'continue key is not valid');
      if (token.rv < Number(this.store.oldestResourceVersion)) {
        return sendStatus(res, 410, 'Expired', 'The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.');
      }
      // Pages after the first are served from the current objects (no snapshots here); a watch
      // from the first page's resourceVersion replays whatever changed in between.
      rv = token.rv;
      start = token.start;
    }
    const limit = Number(q.limit ?? 0);
    const rest = start ? items.filter((o) => objKey(o) > start) : items;
    const page = limit > 0 ? rest.slice(0, limit) : rest;
    const metadata: Record<string, unknown> = { resourceVersion: String(rv) };
    if (page.length < rest.length) {
      metadata.continue = Buffer.from(JSON.stringify({ v: 'meta.k8s.io/v1', rv, start: objKey(page[page.length - 1]!) })).toString('base64url');
      metadata.remainingItemCount = rest.length - page.length;
    }
    sendJson(res, 200, {
      kind: route.type.listKind,
      apiVersion: route.type.apiVersion,
      metadata,
      // List items carry no kind/apiVersion on the wire, as from the real apiserver.
      items: page.map(({ kind: _k, apiVersion: _a, ...rest }) => rest),
    });
  }

  private watch(res: ServerResponse, route: Route, q: Record<string, string>): void {
    const type = route.type;
    const match = this.store.matcher(type, { namespace: route.namespace, labelSelector: q.labelSelector, fieldSelector: q.fieldSelector });
    const rvParam = q.resourceVersion ?? '';
    let replay: StoreEvent[] | null = [];
    let initial: KubeObject[] = [];
    if (rvParam === '' || rvParam === '0') {
      // "Any version": the current state as synthetic ADDED events, then changes.
      initial = this.store.list(type.resource, { namespace: route.namespace, labelSelector: q.labelSelector, fieldSelector: q.fieldSelector });
    } else {
      const rv = Number(rvParam);
      if (!Number.isInteger(rv) || rv < 0) return sendStatus(res, 400, 'BadRequest', `invalid resource version: ${rvParam}`);
      replay = this.store.eventsAfter(rv);
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    const write = (type: string, object: unknown): void => {
      if (!res.destroyed && !res.writableEnded) res.write(`${JSON.stringify({ type, object })}\n`);
    };
    if (replay === null) {
      // The resume point left the history: what the apiserver sends before ending the stream.
      write('ERROR', {
        kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure',
        message: `too old resource version: ${rvParam} (${this.store.oldestResourceVersion})`, reason: 'Expired', code: 410,
      });
      res.end();
      return;
    }
    const send = (e: StoreEvent): void => {
      if (e.resource !== type) return;
      const now = match(e.object);
      const before = e.previous !== null && match(e.previous);
      // Objects entering or leaving the selection are ADDED / DELETED for this watch, like the watch cache does.
      if (e.type === 'DELETED') {
        if (before || now) write('DELETED', e.object);
      } else if (now) write(before ? 'MODIFIED' : 'ADDED', e.object);
      else if (before) write('DELETED', { ...e.previous, metadata: { ...e.previous!.metadata, resourceVersion: e.object.metadata.resourceVersion } });
    };
    for (const o of initial) write('ADDED', o);
    for (const e of replay) send(e);
    this.store.on('event', send);

    const timers: NodeJS.Timeout[] = [];
    const entry: OpenWatch = {
      res,
      close: () => {
        this.store.off('event', send);
        for (const t of timers) clearTimeout(t);
        this.watches.delete(entry);
      },
    };
    this.watches.add(entry);
    if (q.allowWatchBookmarks === 'true') {
      timers.push(setInterval(() => write('BOOKMARK', { kind: type.kind, apiVersion: type.apiVersion, metadata: { resourceVersion: this.store.resourceVersion } }), this.opts.bookmarkIntervalMs ?? 60_000));
    }
    const timeoutMs = q.timeoutSeconds ? Number(q.timeoutSeconds) * 1000 : this.opts.watchTimeoutMs;
    if (timeoutMs !== undefined && Number.isFinite(timeoutMs) && timeoutMs > 0) {
      timers.push(setTimeout(() => {
        entry.close();
        res.end();
      }, timeoutMs));
    }
    // The response's 'close' fires when the stream ends either way (finished, or the socket went).
    res.on('close', entry.close);
  }

  /** Discovery documents (kubectl reads them; client-node's informers do not). */
  private discovery(p: string): unknown {
    const path = p.replace(/\/+$/, '') || '/';
    const groups = [...new Set(RESOURCE_TYPES.map((t) => t.group).filter(Boolean))];
    const resourceList = (group: string): unknown => ({
      kind: 'APIResourceList',
      apiVersion: 'v1',
      groupVersion: group ? `${group}/v1` : 'v1',
      resources: RESOURCE_TYPES.filter((t) => t.group === group).map((t) => ({
        name: t.resource, singularName: t.singular, namespaced: t.namespaced, kind: t.kind, verbs: ['get', 'list', 'watch'],
        ...(t.shortNames.length ? { shortNames: t.shortNames } : {}),
      })),
    });
    const apiGroup = (g: string): unknown => ({
      name: g,
      versions: [{ groupVersion: `${g}/v1`, version: 'v1' }],
      preferredVersion: { groupVersion: `${g}/v1`, version: 'v1' },
    });
    if (path === '/version') {
      const gitVersion = this.opts.gitVersion ?? 'v1.31.0';
      const [, major = '1', minor = '31'] = /^v(\d+)\.(\d+)/.exec(gitVersion) ?? [];
      return { major, minor, gitVersion, gitCommit: '', gitTreeState: 'clean', buildDate: '2024-08-13T07:28:49Z', goVersion: 'go1.22.5', compiler: 'gc', platform: 'linux/amd64' };
    }
    if (path === '/api') return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: new URL(this.url).host }] };
    if (path === '/api/v1') return resourceList('');
    if (path === '/apis') return { kind: 'APIGroupList', apiVersion: 'v1', groups: groups.map(apiGroup) };
    for (const g of groups) {
      if (path === `/apis/${g}`) return { kind: 'APIGroup', apiVersion: 'v1', ...(apiGroup(g) as object) };
      if (path === `/apis/${g}/v1`) return resourceList(g);
    }
    return undefined;
  }
}

/** /api/v1/[namespaces/NS/]RESOURCE[/NAME] and /apis/GROUP/v1/... */
function parseRoute(pathname: string): Route | null {
  const segs = pathname.split('/').filter(Boolean).map(decodeURIComponent);
  let group: string;
  let rest: string[];
  if (segs[0] === 'api' && segs[1] === 'v1') {
    group = '';
    rest = segs.slice(2);
  } else if (segs[0] === 'apis' && segs.length >= 3 && segs[2] === 'v1') {
    group = segs[1]!;
    rest = segs.slice(3);
  } else return null;
  const find = (resource: string | undefined): ResourceType | undefined => RESOURCE_TYPES.find((t) => t.group === group && t.resource === resource);
  if (rest[0] === 'namespaces' && rest.length >= 3) {
    const type = find(rest[2]);
    if (!type || !type.namespaced || rest.length > 4) return null;
    return { type, namespace: rest[1]!, ...(rest[3] !== undefined ? { name: rest[3] } : {}) };
  }
  const type = find(rest[0]);
  if (!type || rest.length > 2) return null;
  if (rest.length === 2) return type.namespaced ? null : { type, name: rest[1]! };
  return { type };
}

function sendJson(res: ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-cache, private' });
  res.end(text);
}

function sendStatus(res: ServerResponse, code: number, reason: string, message: string, details?: Record<string, unknown>): void {
  sendJson(res, code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, ...(details ? { details } : {}), code });
}
