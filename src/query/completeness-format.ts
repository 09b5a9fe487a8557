/**
 * The capture-fault part of an answer's completeness (who, etp): where the kernel's ring buffer
 * overflowed, per node and CPU, and when nodes were not captured at all. --json fields and text lines.
 */
import type { Completeness } from '../transport/proto.generated.js';

export interface CpuLossJson {
  node: string;
  cpu: number;
  ringbuf_full: number;
}

export interface GapJson {
  node: string;
  from: string;
  to: string;
  /** crashed, stopped or failed. */
  cause: string;
  reason: string;
}

/** complete.lost_per_cpu and complete.gaps of the --json output. */
export function captureFaultsJson(c: Completeness | undefined): { lost_per_cpu: CpuLossJson[]; gaps: GapJson[] } {
  return {
    lost_per_cpu: (c?.lostPerCpu ?? []).map((l) => ({ node: l.node, cpu: l.cpu, ringbuf_full: Number(l.ringbufFull) })),
    gaps: (c?.gaps ?? []).map((g) => ({ node: g.node, from: g.from, to: g.to, cause: g.cause, reason: g.reason })),
  };
}

/**
 * One line per node whose kernel lost events ("node2 lost 15 events: ringbuf_full on cpu0: 12,
 * cpu1: 3") and per time a node was not captured ("node2 was not capturing from .. to .. (agent crashed)").
 */
export function captureFaultLines(j: { lost_per_cpu: CpuLossJson[]; gaps: GapJson[] }): string[] {
  const byNode = new Map<string, CpuLossJson[]>();
  for (const l of j.lost_per_cpu) byNode.set(l.node, [...(byNode.get(l.node) ?? []), l]);
  const lines: string[] = [];
  for (const [node, cpus] of [...byNode].sort(([a], [b]) => a.localeCompare(b))) {
    const total = cpus.reduce((n, c) => n + c.ringbuf_full, 0);
    const each = [...cpus].sort((a, b) => a.cpu - b.cpu).map((c) => `cpu${c.cpu}: ${c.ringbuf_full}`).join(', ');
    lines.push(`${node} lost ${total} events: ringbuf_full on ${each}`);
  }
  for (const g of j.gaps) lines.push(`${g.node} was not capturing from ${g.from} to ${g.to} (agent ${g.cause})`);
  return lines;
}
