// Keeps a ClusterMetadata in step with the API server through client-node's informers (list, then
// watch from the list's resourceVersion; a 410 Expired relists). What client-node leaves to its
// user is done here: restarting an informer that stopped on an error (with backoff), field
// selectors (makeInformer does not take one), periodic full relists that delete what a missed
// DELETED left behind without writing history rows for what did not change, and a stop() that
// leaves no request, socket or timer behind.

import { STATUS_CODES, type Agent } from 'node:http';
import {
  ApiException,
  CoreV1Api,
  DiscoveryV1Api,
  KubeConfig,
  ListWatch,
  Observable,
  Watch,
  type ConfigurationOptions,
  type KubernetesListObject,
  type KubernetesObject,
  type ObservableMiddleware,
} from '@kubernetes/client-node';
import { describeError } from '../util/errors.js';
import { ClusterMetadata, type K8sKind, type WatchChange } from './cluster-metadata.js';
import { K8sError } from './errors.js';
import { keyString, objectKey } from './objects.js';

export interface ClusterWatchOptions {
  kubeConfig: KubeConfig;
  resources: K8sKind[];
  /** Agent mode: pods with fieldSelector spec.nodeName=<nodeName>, nodes with metadata.name=<nodeName>. */
  nodeName?: string;
  /** Default: a new one. */
  metadata?: ClusterMetadata;
  /** Full relist period (default 10 min). A relist writes history rows only for real changes. */
  resyncMs?: number;
  /** Structured log lines: {event:'k8s-watch-error', resource, error, retryInMs}, ... */
  log?: (fields: Record<string, unknown>) => void;
  /** Longest one list request (one page) may take (default 30 s). */
  requestTimeoutMs?: number;
  /** Items per list page (limit/continue; default 500, like client-go). */
  pageSize?: number;
}

interface ResourceInfo {
  resource: string;
  path: string;
}

const RESOURCES: Record<K8sKind, ResourceInfo> = {
  Pod: { resource: 'pods', path: '/api/v1/pods' },
  Service: { resource: 'services', path: '/api/v1/services' },
  EndpointSlice: { resource: 'endpointslices', path: '/apis/discovery.k8s.io/v1/endpointslices' },
  Node: { resource: 'nodes', path: '/api/v1/nodes' },
};

/** Delays before the 2nd and 3rd attempt of a first list: a start-up fails within ~2 s plus request time. */
const FIRST_LIST_RETRY_MS = [500, 1500];
const BACKOFF_INITIAL_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** A watch that keeps ending at once must not turn into a busy loop of requests. */
const MIN_WATCH_INTERVAL_MS = 1000;
/** Watches ask the server to end them after 5-10 min (then resume from their resourceVersion). */
const WATCH_TIMEOUT_S = 300;

interface ListParams {
  fieldSelector?: string;
  labelSelector?: string;
  limit: number;
  _continue?: string;
}

type Lister = (p: ListParams, options: ConfigurationOptions) => Promise<KubernetesListObject<KubernetesObject>>;

export class ClusterWatch {
  readonly metadata: ClusterMetadata;
  private readonly watches: ResourceWatch[] = [];
  private resyncTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private synced = false;

  private constructor(readonly opts: ClusterWatchOptions) {
    this.metadata = opts.metadata ?? new ClusterMetadata();
  }

  /**
   * Lists every resource and starts watching; resolves once all have listed. Rejects with a
   * K8sError (URL, resource, HTTP status or connection error) when a first list still fails after
   * three attempts.
   */
  static async start(opts: ClusterWatchOptions): Promise<ClusterWatch> {
    if (!opts.kubeConfig.getCurrentCluster()) throw new K8sError('the kubeconfig has no current cluster');
    const cw = new ClusterWatch(opts);
    try {
      await cw.begin();
    } catch (err) {
      await cw.stop();
      throw err;
    }
    return cw;
  }

  isSynced(): boolean {
    return this.synced && !this.stopped;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.resyncTimer);
    this.resyncTimer = undefined;
    await Promise.all(this.watches.map((w) => w.stop()));
  }

  private async begin(): Promise<void> {
    const core = this.opts.kubeConfig.makeApiClient(CoreV1Api);
    const discovery = this.opts.kubeConfig.makeApiClient(DiscoveryV1Api);
    const node = this.opts.nodeName;
    const listers: Record<K8sKind, Lister> = {
      Pod: (p, o) => core.listPodForAllNamespaces(p, o),
      Service: (p, o) => core.listServiceForAllNamespaces(p, o),
      EndpointSlice: (p, o) => discovery.listEndpointSliceForAllNamespaces(p, o),
      Node: (p, o) => core.listNode(p, o),
    };
    for (const kind of [...new Set(this.opts.resources)]) {
      const fieldSelector = node === undefined ? undefined : kind === 'Pod' ? `spec.nodeName=${node}` : kind === 'Node' ? `metadata.name=${node}` : undefined;
      this.watches.push(new ResourceWatch({
        kind,
        info: RESOURCES[kind],
        kubeConfig: this.opts.kubeConfig,
        metadata: this.metadata,
        lister: listers[kind],
        fieldSelector,
        log: this.opts.log ?? (() => undefined),
        requestTimeoutMs: this.opts.requestTimeoutMs ?? 30_000,
        pageSize: this.opts.pageSize ?? 500,
      }));
    }
    for (const w of this.watches) w.start();
    await Promise.all(this.watches.map((w) => w.firstSync));
    if (this.stopped) return;
    this.metadata.markSynced();
    this.synced = true;
    const resyncMs = this.opts.resyncMs ?? 10 * 60_000;
    if (resyncMs > 0 && Number.isFinite(resyncMs)) {
      this.resyncTimer = setInterval(() => {
        for (const w of this.watches) w.relist();
      }, resyncMs);
      this.resyncTimer.unref();
    }
  }
}

interface ResourceWatchOptions {
  kind: K8sKind;
  info: ResourceInfo;
  kubeConfig: KubeConfig;
  metadata: ClusterMetadata;
  lister: Lister;
  fieldSelector: string | undefined;
  log: (fields: Record<string, unknown>) => void;
  requestTimeoutMs: number;
  pageSize: number;
}

/** One informer's life: its list is applied as one batch, and reconciled against what is held. */
interface InformerRun {
  informer: ListWatch<KubernetesObject>;
  /** Keys of the last list's items, from the list until the informer has applied them. */
  listed: Set<string> | null;
}

/** One resource's informer, restarted with backoff after errors and replaced by a fresh one to relist. */
class ResourceWatch {
  readonly firstSync: Promise<void>;
  private resolveFirst!: () => void;
  private rejectFirst!: (err: unknown) => void;
  private current: InformerRun | null = null;
  private synced = false;
  private stopped = false;
  private firstFailures = 0;
  private backoffMs = BACKOFF_INITIAL_MS;
  private lastWatchStart = 0;
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly sleepers = new Set<() => void>();
  private readonly requests = new Set<AbortController>();
  private watchAgent: Agent | undefined;
  /** The kubeconfig the informer's Watch uses: hands out the same settings, but remembers each connection's agent. */
  private readonly watchConfig: KubeConfig;

  constructor(private readonly o: ResourceWatchOptions) {
    this.firstSync = new Promise<void>((resolve, reject) => {
      this.resolveFirst = resolve;
      this.rejectFirst = reject;
    });
    // Nothing else to hold on to: awaited by ClusterWatch.begin, which may have given up already.
    this.firstSync.catch(() => undefined);
    const base = o.kubeConfig;
    this.watchConfig = Object.create(base) as KubeConfig;
    this.watchConfig.applyToFetchOptions = async (opts) => {
      const init = await base.applyToFetchOptions(opts);
      const agent = init.agent;
      if (agent && typeof agent === 'object') {
        // The previous watch of this informer has ended before a new one starts.
        this.watchAgent?.destroy();
        this.watchAgent = agent as Agent;
      }
      return init;
    };
  }

  start(): void {
    this.run(this.newRun());
  }

  /** A full relist through a fresh informer (the old one is stopped and ignored from now on). */
  relist(): void {
    if (this.stopped || !this.synced) return;
    const old = this.current;
    const next = this.newRun();
    this.closeRun(old);
    void old?.informer.stop();
    this.run(next);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const wake of this.sleepers) wake();
    for (const c of this.requests) c.abort();
    const run = this.current;
    this.closeRun(run);
    this.current = null;
    await run?.informer.stop();
    // A watch request still connecting would otherwise keep its socket until the server answers.
    this.watchAgent?.destroy();
    this.watchAgent = undefined;
  }

  private newRun(): InformerRun {
    const run: InformerRun = { informer: undefined as unknown as ListWatch<KubernetesObject>, listed: null };
    const watch = new TrackingWatch(this.watchConfig, (connect) => this.connectWatch(run, connect), (phase, obj) => this.onWatchEvent(phase, obj));
    run.informer = new ListWatch<KubernetesObject>(this.o.info.path, watch, () => this.list(run), false, undefined, this.o.fieldSelector);
    const deliver = (type: WatchChange['type']) => (object: KubernetesObject): void => {
      if (run !== this.current || this.stopped) return;
      this.o.metadata.apply({ type, kind: this.o.kind, object });
    };
    run.informer.on('add', deliver('ADDED'));
    run.informer.on('update', deliver('MODIFIED'));
    run.informer.on('delete', deliver('DELETED'));
    run.informer.on('error', (err: unknown) => this.onError(run, err));
    this.current = run;
    return run;
  }

  private run(run: InformerRun): void {
    run.informer.start().catch((err: unknown) => this.onError(run, err));
  }

  /** The informer's list function: every page, then the batch that makes the list one change. */
  private async list(run: InformerRun): Promise<KubernetesListObject<KubernetesObject>> {
    if (this.stopped || run !== this.current) throw new Error('stopped');
    let items: KubernetesObject[] = [];
    let resourceVersion: string | undefined;
    let cont: string | undefined;
    let restarted = false;
    do {
      let page: KubernetesListObject<KubernetesObject>;
      try {
        page = await this.listPage(cont);
      } catch (err) {
        // An expired continue token: start over once (the snapshot moved on).
        if (cont && !restarted && err instanceof K8sError && err.statusCode === 410) {
          restarted = true;
          items = [];
          resourceVersion = undefined;
          cont = undefined;
          continue;
        }
        throw err;
      }
      items.push(...(page.items ?? []));
      resourceVersion ??= page.metadata?.resourceVersion;
      cont = (page.metadata as { _continue?: string } | undefined)?._continue || undefined;
    } while (cont);
    if (this.stopped || run !== this.current) throw new Error('stopped');
    run.listed = new Set(items.flatMap((i) => {
      const k = objectKey(i);
      return k ? [keyString(k)] : [];
    }));
    // The informer applies the items right after this resolves, then opens its watch
    // (connectWatch), where the batch ends.
    this.o.metadata.beginBatch();
    return { apiVersion: 'v1', kind: 'List', metadata: { resourceVersion: resourceVersion ?? '' }, items };
  }

  private async listPage(cont: string | undefined): Promise<KubernetesListObject<KubernetesObject>> {
    const controller = new AbortController();
    this.requests.add(controller);
    const timer = setTimeout(() => controller.abort(), this.o.requestTimeoutMs);
    let url = `${this.o.kubeConfig.getCurrentCluster()?.server ?? ''}${this.o.info.path}`;
    // Runs after the kubeconfig's authentication: the place to learn the URL and attach our signal.
    const middleware: ObservableMiddleware = {
      pre: (ctx) => {
        url = ctx.getUrl();
        ctx.setSignal(controller.signal);
        return new Observable(Promise.resolve(ctx));
      },
      post: (ctx) => new Observable(Promise.resolve(ctx)),
    };
    try {
      return await this.o.lister(
        { limit: this.o.pageSize, ...(this.o.fieldSelector ? { fieldSelector: this.o.fieldSelector } : {}), ...(cont ? { _continue: cont } : {}) },
        { middleware: [middleware], middlewareMergeStrategy: 'append' },
      );
    } catch (err) {
      throw listError(this.o.info.resource, url, err, controller.signal.aborted && !this.stopped ? this.o.requestTimeoutMs : undefined);
    } finally {
      clearTimeout(timer);
      this.requests.delete(controller);
    }
  }

  /** Called by the informer's Watch: first the end of a list, then the (throttled) watch request. */
  private async connectWatch(run: InformerRun, connect: () => Promise<AbortController>): Promise<AbortController> {
    if (run.listed) this.listApplied(run);
    if (this.stopped || run !== this.current) return new AbortController();
    const wait = this.lastWatchStart + MIN_WATCH_INTERVAL_MS - Date.now();
    if (wait > 0) await this.sleep(wait);
    if (this.stopped || run !== this.current) return new AbortController();
    this.lastWatchStart = Date.now();
    const controller = await connect();
    if (this.stopped || run !== this.current) controller.abort();
    return controller;
  }

  /** Seen by the Watch before the informer: a working stream resets the backoff. */
  private onWatchEvent(phase: string, obj: unknown): void {
    if (phase === 'ERROR') {
      const status = obj as { code?: number; message?: string } | undefined;
      if (status?.code === 410) this.o.log({ event: 'k8s-watch-expired', resource: this.o.info.resource, message: status.message });
      return;
    }
    this.backoffMs = BACKOFF_INITIAL_MS;
  }

  /** The informer has applied a list: delete what it no longer names, end the batch, count as synced. */
  private listApplied(run: InformerRun): void {
    const listed = run.listed!;
    run.listed = null;
    if (run === this.current && !this.stopped) {
      for (const key of this.o.metadata.objectKeys(this.o.kind)) {
        if (!listed.has(keyString(key))) {
          this.o.metadata.apply({ type: 'DELETED', kind: this.o.kind, object: { metadata: { namespace: key.namespace, name: key.name } } });
        }
      }
    }
    this.o.metadata.endBatch();
    this.backoffMs = BACKOFF_INITIAL_MS;
    if (!this.synced && run === this.current && !this.stopped) {
      this.synced = true;
      this.resolveFirst();
    }
  }

  /** Ends a run's open batch (a list whose items were never fully applied). */
  private closeRun(run: InformerRun | null): void {
    if (run?.listed) {
      run.listed = null;
      this.o.metadata.endBatch();
    }
  }

  private onError(run: InformerRun, err: unknown): void {
    if (this.stopped || run !== this.current) return;
    this.closeRun(run);
    const resource = this.o.info.resource;
    if (!this.synced) {
      this.firstFailures++;
      const retryInMs = FIRST_LIST_RETRY_MS[this.firstFailures - 1];
      if (retryInMs === undefined) {
        const e = err instanceof K8sError ? err : listError(resource, `${this.o.kubeConfig.getCurrentCluster()?.server ?? ''}${this.o.info.path}`, err);
        this.rejectFirst(new K8sError(`${e.message} (gave up after ${this.firstFailures} attempts)`, { cause: err, resource, url: e.url, statusCode: e.statusCode }));
        return;
      }
      this.o.log({ event: 'k8s-watch-error', resource, error: describeError(err), retryInMs });
      this.after(retryInMs, () => this.restart(run));
      return;
    }
    const retryInMs = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
    this.o.log({ event: 'k8s-watch-error', resource, error: describeError(err), retryInMs });
    this.after(retryInMs, () => this.restart(run));
  }

  /** start() resumes the watch from the last resourceVersion seen (or relists after a 410). */
  private restart(run: InformerRun): void {
    // A relist may have replaced the informer while this one was waiting.
    if (run === this.current && !this.stopped) this.run(run);
  }

  private after(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.stopped) fn();
    }, ms);
    this.timers.add(t);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = (): void => {
        clearTimeout(t);
        this.sleepers.delete(wake);
        resolve();
      };
      const t = setTimeout(wake, ms);
      this.sleepers.add(wake);
    });
  }
}

/** client-node's Watch, with each connection going through ResourceWatch.connectWatch and each event seen first. */
class TrackingWatch extends Watch {
  constructor(
    config: KubeConfig,
    private readonly gate: (connect: () => Promise<AbortController>) => Promise<AbortController>,
    private readonly observe: (phase: string, obj: unknown) => void,
  ) {
    super(config);
  }

  override watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    const seen = (phase: string, obj: unknown, watchObj?: unknown): void => {
      this.observe(phase, obj);
      callback(phase, obj, watchObj);
    };
    // As client-go does: bookmarks keep a quiet resource's resume point recent (fewer 410
    // relists), and a server-side timeout of 5-10 min replaces a connection that died silently.
    const params = { ...queryParams, allowWatchBookmarks: true, timeoutSeconds: WATCH_TIMEOUT_S + Math.floor(Math.random() * WATCH_TIMEOUT_S) };
    return this.gate(() => super.watch(path, params, seen, done));
  }
}

/** A K8sError for a failed list request, naming the resource, URL and what went wrong. */
function listError(resource: string, url: string, err: unknown, timedOutAfterMs?: number): K8sError {
  if (err instanceof K8sError) return err;
  if (timedOutAfterMs !== undefined) {
    return new K8sError(`listing ${resource} at ${url}: no answer within ${timedOutAfterMs / 1000}s`, { cause: err, resource, url });
  }
  if (err instanceof ApiException) {
    const e = err as ApiException<unknown>;
    return new K8sError(`listing ${resource} at ${url}: HTTP ${e.code}: ${statusMessage(e)}`, { cause: err, resource, url, statusCode: e.code });
  }
  const code = (err as { code?: unknown }).code;
  const detail = err instanceof Error ? err.message : String(err);
  return new K8sError(`listing ${resource} at ${url}: ${detail}${typeof code === 'string' && !detail.includes(code) ? ` (${code})` : ''}`, { cause: err, resource, url });
}

/** The Status body's message, else what the client named the status, else its HTTP reason phrase. */
function statusMessage(e: ApiException<unknown>): string {
  let body: unknown = e.body;
  if (typeof e.body === 'string') {
    const text = e.body.trim();
    try {
      body = JSON.parse(text);
    } catch {
      if (text) return text.slice(0, 200);
    }
  }
  const m = (body as { message?: unknown } | null | undefined)?.message;
  if (typeof m === 'string' && m) return m;
  // client-node's own text for statuses the API spec lists ("Unauthorized"); not its catch-all.
  const named = /\nMessage: (.*)\n/.exec(e.message)?.[1];
  if (named && named !== 'Unknown API Status Code!') return named;
  return STATUS_CODES[e.code] ?? 'error';
}
