/**
 * "Two collectors behind one address": a round-robin TCP balancer on loopback, like a Kubernetes
 * Service in front of a collector Deployment. Each new connection goes to the next backend.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export class TcpBalancer {
  private server: Server | undefined;
  private next = 0;
  private readonly sockets = new Set<Socket>();
  readonly picks: string[] = [];
  port = 0;

  constructor(private readonly backends: string[]) {}

  async start(): Promise<string> {
    this.server = createServer((down) => {
      const backend = this.backends[this.next++ % this.backends.length]!;
      this.picks.push(backend);
      const [host, port] = [backend.slice(0, backend.lastIndexOf(':')), Number(backend.slice(backend.lastIndexOf(':') + 1))];
      const up = connect({ host, port });
      for (const s of [down, up]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => { down.destroy(); up.destroy(); });
      }
      down.pipe(up).pipe(down);
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as { port: number }).port;
    return `127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/** Free loopback ports (bound then released: a collector takes them a moment later). */
export async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise<Server>((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => resolve(s));
  })));
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}
