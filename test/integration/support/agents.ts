/** Runs one real agent per lab node (in this process, each with its own natlens-probe) and collects their events. */
import { Agent } from '../../../src/agent/agent.js';
import type { AgentEvent, ConnEvent, DropEvent } from '../../../src/agent/events.js';
import { AGENT_SETTINGS, resolveConfig } from '../../../src/config.js';

export interface NodeRef {
  name: string;
  netnsPath: string;
}

export class AgentFleet {
  readonly events: AgentEvent[] = [];
  readonly warnings: string[] = [];
  private readonly agents: Agent[] = [];

  async start(nodes: NodeRef[], overrides: Partial<ReturnType<typeof agentDefaults>> = {}): Promise<void> {
    for (const node of nodes) {
      const agent = new Agent({ ...agentDefaults(), ...overrides, node: node.name, netns: node.netnsPath });
      agent.on('event', (ev: AgentEvent) => this.events.push(ev));
      agent.on('warn', (w: string) => this.warnings.push(`${node.name}: ${w}`));
      this.agents.push(agent);
    }
    await Promise.all(this.agents.map((a) => a.start()));
  }

  async stop(): Promise<void> {
    await Promise.all(this.agents.map((a) => a.stop()));
  }

  conns(): ConnEvent[] {
    return this.events.filter((e): e is ConnEvent => e.type === 'conn');
  }

  drops(): DropEvent[] {
    return this.events.filter((e): e is DropEvent => e.type === 'drop');
  }

  /** Total events lost anywhere, from the agents' latest stats. */
  lost(): number {
    return this.agents.reduce((sum, a) => sum + (a.stats()?.lost.total ?? 0), 0);
  }
}

export function agentDefaults() {
  // Short drop window: the tests wait for drop reports.
  return { ...resolveConfig(AGENT_SETTINGS, {}, {}), mode: 'auto' as const, dropAfterMs: 500, statsIntervalMs: 1000 };
}

/** Polls until `pick()` returns a value (not undefined), or fails after `timeoutMs` with `what`. */
export async function waitFor<T>(pick: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = pick();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
