/**
 * The Linux capabilities the agent needs, checked once at start-up against /proc/self/status
 * (CapEff) so that a missing one is named with its use before anything is attached, instead of
 * surfacing later as an EPERM from deep inside the probe. natlens-probe is the agent's child and
 * inherits these (as root through the bounding set, as another user through ambient capabilities).
 *
 * Each need was verified on kernel 6.18 by removing it (test/integration/capabilities.test.ts,
 * docs/security.md "Capabilities"). CAP_SYS_RESOURCE is not needed there (capture runs with
 * RLIMIT_MEMLOCK 0): since 5.11 BPF memory is charged to the memory cgroup; it is asked for only
 * where the kernel still charges memlock. --mode auto probes the kernel in a throw-away network
 * namespace (unshare), which takes CAP_SYS_ADMIN: without it auto would quietly fall back to
 * conntrack events, so it is a need of auto, and --mode tc goes without it.
 */
import { readFileSync } from 'node:fs';
import { release } from 'node:os';
import { NatlensError } from '../util/errors.js';

/** Exit code of an agent that lacks capabilities (EX_NOPERM of sysexits.h). */
export const EXIT_MISSING_CAPABILITIES = 77;

/** Capability numbers (linux/capability.h). */
export const CAPABILITY_BITS = {
  CAP_NET_ADMIN: 12,
  CAP_SYS_ADMIN: 21,
  CAP_SYS_RESOURCE: 24,
  CAP_PERFMON: 38,
  CAP_BPF: 39,
} as const;
export type CapabilityName = keyof typeof CAPABILITY_BITS;

export interface CapabilityNeed {
  name: CapabilityName;
  /** What natlens does with it, for the error message and `natlens doctor`. */
  purpose: string;
  /** Capabilities the kernel accepts instead (CAP_SYS_ADMIN covers BPF and PERFMON). */
  alternatives: CapabilityName[];
}

export interface AgentCapabilityOptions {
  /** Capture in another network namespace (setns). */
  netns?: string;
  mode?: 'auto' | 'tc' | 'ctnetlink';
}

/** True when BPF maps are charged to RLIMIT_MEMLOCK (kernels before 5.11). */
export function kernelChargesMemlock(kernelRelease = release()): boolean {
  const m = /^(\d+)\.(\d+)/.exec(kernelRelease);
  if (!m) return true;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major < 5 || (major === 5 && minor < 11);
}

/** The capabilities the agent needs with these options on this kernel. */
export function neededCapabilities(opts: AgentCapabilityOptions, kernelRelease = release()): CapabilityNeed[] {
  const needs: CapabilityNeed[] = [];
  const bpf = opts.mode !== 'ctnetlink';
  if (bpf) {
    needs.push({ name: 'CAP_BPF', purpose: 'load the tc programs, create the maps and the ring buffer', alternatives: ['CAP_SYS_ADMIN'] });
    needs.push({ name: 'CAP_PERFMON', purpose: 'let the verifier accept the programs\' pointer arithmetic and conntrack kfunc calls', alternatives: ['CAP_SYS_ADMIN'] });
  }
  needs.push({
    name: 'CAP_NET_ADMIN',
    purpose: bpf ? 'attach tc (clsact) filters to the interfaces and subscribe to conntrack events (ctnetlink)' : 'subscribe to conntrack events (ctnetlink)',
    alternatives: [],
  });
  const sysAdmin: string[] = [];
  if (opts.netns) sysAdmin.push(`enter the network namespace ${opts.netns} (setns, --netns)`);
  if (opts.mode === undefined || opts.mode === 'auto') sysAdmin.push('probe the kernel\'s features in a throw-away network namespace (--mode auto; --mode tc goes without)');
  if (sysAdmin.length) needs.push({ name: 'CAP_SYS_ADMIN', purpose: sysAdmin.join(', and '), alternatives: [] });
  if (bpf && kernelChargesMemlock(kernelRelease)) {
    needs.push({ name: 'CAP_SYS_RESOURCE', purpose: 'raise RLIMIT_MEMLOCK for the BPF maps (this kernel charges them to it)', alternatives: [] });
  }
  return needs;
}

/** The effective capability set of this process (CapEff of /proc/self/status). */
export function effectiveCapabilities(statusText?: string): bigint {
  const text = statusText ?? readFileSync('/proc/self/status', 'utf8');
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(text);
  return m ? BigInt(`0x${m[1]}`) : 0n;
}

export function hasCapability(caps: bigint, name: CapabilityName): boolean {
  return (caps & (1n << BigInt(CAPABILITY_BITS[name]))) !== 0n;
}

/** The needs `caps` does not satisfy (neither the capability nor one of its alternatives). */
export function missingCapabilities(needs: CapabilityNeed[], caps: bigint): CapabilityNeed[] {
  return needs.filter((n) => !hasCapability(caps, n.name) && !n.alternatives.some((a) => hasCapability(caps, a)));
}

export class MissingCapabilitiesError extends NatlensError {
  constructor(readonly missing: CapabilityNeed[]) {
    super(
      `agent: missing capabilities:\n${missing.map((n) => `  ${n.name}: to ${n.purpose}`).join('\n')}\n` +
        `Run as root, or grant them (e.g. setpriv --ambient-caps, or the container's securityContext.capabilities.add); ` +
        `'natlens doctor' lists what this process has. See docs/security.md ("Capabilities").`,
      { exitCode: EXIT_MISSING_CAPABILITIES },
    );
  }
}

/** Throws MissingCapabilitiesError naming each missing capability and what it is for. */
export function checkAgentCapabilities(opts: AgentCapabilityOptions, caps = effectiveCapabilities()): void {
  const missing = missingCapabilities(neededCapabilities(opts), caps);
  if (missing.length) throw new MissingCapabilitiesError(missing);
}
