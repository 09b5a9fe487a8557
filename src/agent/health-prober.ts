/**
 * Reads this node's health-check node ports as a cloud load balancer does: for every LoadBalancer
 * Service with externalTrafficPolicy Local, GET http://<node address>:<healthCheckNodePort>/healthz
 * every interval, and report what came back (status, kube-proxy's localEndpoints, or why nothing
 * did). kube-proxy answers 200 with local endpoints and 503 without: the load balancer's view of
 * which nodes may receive traffic, recorded next to the traffic itself.
 *
 * The request must leave from the node's network namespace. An agent capturing another namespace
 * (--netns, the lab) runs a small worker inside it (health-probe-worker.ts) and talks JSON lines.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createHealthCheckReading, type HealthCheckReading } from '../transport/proto.generated.js';
import { probeHealth, type ProbeAnswer } from './health-probe-worker.js';

export interface HealthTarget {
  namespace: string;
  name: string;
  port: number;
}

export interface HealthProberOptions {
  /** Capture namespace (path); unset: this process's own. */
  netns?: string;
  /** The node address to ask (kube-proxy serves health checks on the node's addresses). */
  nodeAddress: () => string | undefined;
  targets: () => HealthTarget[];
  intervalMs: number;
  timeoutMs: number;
  onReading: (r: HealthCheckReading) => void;
}

export class HealthProber {
  private timer: NodeJS.Timeout | undefined;
  private worker: ChildProcess | undefined;
  private readonly pending = new Map<number, (a: ProbeAnswer) => void>();
  private nextId = 1;
  private running = false;
  private round: Promise<void> | null = null;

  constructor(private readonly opts: HealthProberOptions) {}

  start(): void {
    this.running = true;
    const tick = (): void => {
      if (!this.running) return;
      if (!this.round) this.round = this.probeAll().finally(() => (this.round = null));
      this.timer = setTimeout(tick, this.opts.intervalMs);
      this.timer.unref();
    };
    tick();
  }

  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    await this.round?.catch(() => undefined);
    const w = this.worker;
    this.worker = undefined;
    if (w && w.exitCode === null) {
      w.stdin?.end();
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          w.kill('SIGKILL');
          resolve();
        }, 2000);
        w.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    for (const done of this.pending.values()) done({ status: 0, localEndpoints: -1, error: 'agent stopping' });
    this.pending.clear();
  }

  private async probeAll(): Promise<void> {
    const address = this.opts.nodeAddress();
    const targets = this.opts.targets();
    if (!address || targets.length === 0) return;
    await Promise.all(
      targets.map(async (t) => {
        const url = `http://${address.includes(':') ? `[${address}]` : address}:${t.port}/healthz`;
        const answer = await this.ask(url);
        if (!this.running) return;
        this.opts.onReading(createHealthCheckReading({
          tsNs: BigInt(Date.now()) * 1_000_000n, namespace: t.namespace, service: t.name, port: t.port,
          statusCode: answer.status, localEndpoints: answer.localEndpoints, error: answer.error.slice(0, 1024),
        }));
      }),
    );
  }

  private ask(url: string): Promise<ProbeAnswer> {
    if (!this.opts.netns) return probeHealth(url, this.opts.timeoutMs);
    const w = this.ensureWorker();
    const id = this.nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        resolve({ status: 0, localEndpoints: -1, error: `no answer from the probe worker within ${this.opts.timeoutMs * 2} ms` });
      }, this.opts.timeoutMs * 2);
      this.pending.set(id, (a) => {
        clearTimeout(timer);
        resolve(a);
      });
      w.stdin?.write(`${JSON.stringify({ id, url, timeoutMs: this.opts.timeoutMs })}\n`);
    });
  }

  private ensureWorker(): ChildProcess {
    if (this.worker && this.worker.exitCode === null) return this.worker;
    const script = fileURLToPath(new URL('./health-probe-worker.js', import.meta.url));
    const w = spawn('nsenter', [`--net=${this.opts.netns}`, process.execPath, script], { stdio: ['pipe', 'pipe', 'ignore'] });
    w.on('error', () => undefined);
    w.on('exit', () => {
      for (const done of this.pending.values()) done({ status: 0, localEndpoints: -1, error: 'probe worker exited' });
      this.pending.clear();
    });
    createInterface({ input: w.stdout! }).on('line', (line) => {
      try {
        const msg = JSON.parse(line) as ProbeAnswer & { id: number };
        const done = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        done?.({ status: msg.status, localEndpoints: msg.localEndpoints, error: msg.error });
      } catch {
        /* a worker line that is not JSON: ignore it */
      }
    });
    this.worker = w;
    return w;
  }
}
