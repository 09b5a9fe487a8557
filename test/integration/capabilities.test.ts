// Least privilege, on a lab node (root): which capabilities capture really needs, verified by
// taking each away (setpriv), and the agent's start-up check naming what is missing.
// - natlens-probe itself (no natlens check in the way) fails without CAP_BPF, CAP_PERFMON or
//   CAP_NET_ADMIN, and captures with exactly those three, RLIMIT_MEMLOCK 0 and no
//   CAP_SYS_RESOURCE / CAP_SYS_ADMIN, inside the node's namespace (kernel >= 5.11);
// - `natlens agent` lacking one exits 77 naming it and its use; with exactly the set it needs it
//   captures, as root and as an unprivileged user with ambient capabilities.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT_MISSING_CAPABILITIES, kernelChargesMemlock } from '../../src/agent/capabilities.js';
import { labCurl, labDown, labUp, type LabState } from '../../src/lab/lab.js';
import { BPF_OBJECT, PACKAGE_ROOT, PROBE_BIN } from '../../src/util/paths.js';
import type { DoctorReport } from '../../src/cli/doctor-command.js';
import { skipReason } from './support/requirements.js';

const setprivMissing = ['setpriv', 'prlimit'].find((b) => spawnSync('sh', ['-c', `command -v ${b}`]).status !== 0);
const skip = skipReason() ?? (setprivMissing ? `${setprivMissing} (util-linux) is not installed` : undefined)
  ?? (kernelChargesMemlock() ? 'this kernel charges BPF maps to RLIMIT_MEMLOCK (before 5.11): the exact set differs' : undefined);
if (skip) console.warn(`test/integration/capabilities.test.ts: skipped: ${skip}`);

const NATLENS = join(PACKAGE_ROOT, 'bin', 'natlens');
const NOBODY = '65534';

interface Run {
  ready: boolean;
  code: number | null;
  stdout: string[];
  stderr: string[];
  /** Connections captured while it ran (agent JSON lines). */
  conns: number;
}

/**
 * Runs `command` until it reports ready (then drives one NodePort connection through node2 and
 * stops it with SIGINT) or exits on its own; bounded by 20 s.
 */
async function runUntilReady(command: string[], isReady: (line: string, stream: 'stdout' | 'stderr') => boolean, traffic: () => Promise<void>): Promise<Run> {
  const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Run = { ready: false, code: null, stdout: [], stderr: [], conns: 0 };
  let onReady: () => void = () => {};
  const readySeen = new Promise<void>((resolve) => { onReady = resolve; });
  const watch = (stream: 'stdout' | 'stderr') => createInterface({ input: child[stream]! }).on('line', (line) => {
    out[stream].push(line);
    if (line.includes('"type":"conn"')) out.conns++;
    if (!out.ready && isReady(line, stream)) {
      out.ready = true;
      onReady();
    }
  });
  watch('stdout');
  watch('stderr');
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  try {
    const first = await Promise.race([readySeen.then(() => 'ready' as const), exited.then(() => 'exited' as const)]);
    if (first === 'ready') {
      await traffic();
      await new Promise((r) => setTimeout(r, 1500)); // the agent reports a connection within its drain interval
      child.kill('SIGINT');
    }
    out.code = await exited;
  } finally {
    clearTimeout(timer);
    if (child.exitCode === null) child.kill('SIGKILL');
  }
  return out;
}

/** setpriv arguments giving exactly `caps` (as root through the bounding set; as another user also ambient). */
function only(caps: string[], user?: string): string[] {
  const set = ['-all', ...caps.map((c) => `+${c}`)].join(',');
  const asUser = user ? ['--reuid', user, '--regid', user, '--clear-groups', '--inh-caps', set, '--ambient-caps', set] : [];
  return ['setpriv', ...asUser, '--bounding-set', set];
}

describe.skipIf(!!skip)('capabilities of capture (setpriv)', () => {
  const prefix = `k${process.pid % 100000}`;
  let state: LabState;
  let lockDir: string;
  const node2 = () => state.nodes.find((n) => n.name === 'node2')!;
  const traffic = async (): Promise<void> => {
    await labCurl('client', 'nodeport@node2', { prefix }).catch(() => undefined);
  };
  // Each run starts as a first run would: runs under other users (root, nobody) leave lock (state)
  // files this one may not open without CAP_DAC_OVERRIDE; a real node keeps one user.
  const agent = (wrapper: string[], extra: string[] = []) => (clearLocks(), runUntilReady(
    [...wrapper, process.execPath, NATLENS, 'agent', '--node', 'node2', '--stdout', '--lock-dir', lockDir, '--drop-after', '500ms', ...extra],
    (line, stream) => stream === 'stdout' && line.includes('"type":"ready"'),
    traffic,
  ));
  const clearLocks = (): void => { for (const f of readdirSync(lockDir)) rmSync(join(lockDir, f), { force: true }); };

  beforeAll(async () => {
    state = await labUp({ prefix, proxyMode: 'iptables', force: true });
    lockDir = mkdtempSync(join(tmpdir(), 'natlens-caps-lock-'));
    chmodSync(lockDir, 0o777); // the unprivileged run takes its lock here too
  }, 60_000);

  afterAll(async () => {
    await labDown({ prefix });
    if (lockDir && existsSync(lockDir)) rmSync(lockDir, { recursive: true, force: true });
  }, 60_000);

  describe('natlens-probe, in the node\'s namespace, --mode tc, RLIMIT_MEMLOCK 0', () => {
    const probe = (caps: string[]) => runUntilReady(
      ['ip', 'netns', 'exec', node2().netns, 'prlimit', '--memlock=0:0', ...only(caps), PROBE_BIN, 'run', '--obj', BPF_OBJECT, '--mode', 'tc', '--lock-dir', lockDir],
      (line, stream) => stream === 'stderr' && line.includes('"event":"ready"'),
      traffic,
    );

    it('captures with exactly CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN (no CAP_SYS_RESOURCE, no CAP_SYS_ADMIN)', async () => {
      const r = await probe(['bpf', 'perfmon', 'net_admin']);
      expect(r.ready, r.stderr.join('\n')).toBe(true);
      expect(r.stderr.find((l) => l.includes('"event":"ready"'))).toContain('"mode":"tc"');
    }, 40_000);

    it.each([
      ['bpf', ['perfmon', 'net_admin']],
      ['perfmon', ['bpf', 'net_admin']],
      ['net_admin', ['bpf', 'perfmon']],
    ])('fails without CAP_%s', async (_missing, caps) => {
      const r = await probe(caps);
      expect(r.ready).toBe(false);
      expect(r.code).not.toBe(0);
      expect(r.stderr.join('\n')).toMatch(/not permitted|Permission denied/i);
    }, 40_000);
  });

  describe('natlens agent --netns (auto mode)', () => {
    const NEEDED = ['bpf', 'perfmon', 'net_admin', 'sys_admin'];

    it.each([
      ['net_admin', /CAP_NET_ADMIN: to attach tc \(clsact\) filters/],
      ['sys_admin', /CAP_SYS_ADMIN: to enter the network namespace .*setns/],
    ])('without CAP_%s exits 77 naming it and what it is for', async (missing, message) => {
      const r = await agent(only(NEEDED.filter((c) => c !== missing)), ['--netns', node2().netnsPath]);
      expect(r.ready).toBe(false);
      expect(r.code).toBe(EXIT_MISSING_CAPABILITIES);
      const text = r.stderr.join('\n');
      expect(text).toMatch(message);
      expect(text).toMatch(/missing capabilities:/);
      for (const other of NEEDED.filter((c) => c !== missing)) expect(text).not.toContain(`CAP_${other.toUpperCase()}:`);
    }, 40_000);

    it('captures with exactly CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN', async () => {
      const r = await agent(only(NEEDED), ['--netns', node2().netnsPath]);
      expect(r.ready, r.stderr.join('\n')).toBe(true);
      expect(r.stdout.find((l) => l.includes('"type":"ready"'))).toContain('"mode":"tc"');
      expect(r.conns).toBeGreaterThan(0);
      expect(r.code).toBe(0);
    }, 40_000);

    it('needs no root uid: the same set as ambient capabilities of user nobody', async () => {
      const r = await agent(only(NEEDED, NOBODY), ['--netns', node2().netnsPath]);
      expect(r.ready, r.stderr.join('\n')).toBe(true);
      expect(r.conns).toBeGreaterThan(0);
    }, 40_000);
  });

  describe('natlens agent in the node\'s own namespace, --mode tc', () => {
    const inNode = (caps: string[]) => ['ip', 'netns', 'exec', node2().netns, 'prlimit', '--memlock=0:0', ...only(caps)];

    it('captures with CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN only (what the Helm chart grants)', async () => {
      const r = await agent(inNode(['bpf', 'perfmon', 'net_admin']), ['--mode', 'tc']);
      expect(r.ready, r.stderr.join('\n')).toBe(true);
      expect(r.stdout.find((l) => l.includes('"type":"ready"'))).toContain('"mode":"tc"');
      expect(r.conns).toBeGreaterThan(0);
    }, 40_000);

    it('--mode auto without CAP_SYS_ADMIN is refused rather than quietly degraded to conntrack events', async () => {
      const r = await agent(inNode(['bpf', 'perfmon', 'net_admin']), ['--mode', 'auto']);
      expect(r.code).toBe(EXIT_MISSING_CAPABILITIES);
      expect(r.stderr.join('\n')).toMatch(/CAP_SYS_ADMIN: to probe the kernel's features .*--mode tc goes without/);
    }, 40_000);
  });

  describe('natlens doctor', () => {
    const doctor = (caps: string[]): DoctorReport => {
      const r = spawnSync(only(caps)[0]!, [...only(caps).slice(1), process.execPath, NATLENS, 'doctor', '--json'], { encoding: 'utf8', timeout: 60_000 });
      return JSON.parse(r.stdout) as DoctorReport;
    };

    it('lists each capability the agent needs, with what it is for, and says capture cannot run without NET_ADMIN', () => {
      const full = doctor(['bpf', 'perfmon', 'net_admin', 'sys_admin']);
      expect(full.capabilities.map((c) => [c.name, c.ok])).toEqual([['CAP_BPF', true], ['CAP_PERFMON', true], ['CAP_NET_ADMIN', true], ['CAP_SYS_ADMIN', true]]);
      expect(full.capabilities.every((c) => c.purpose.length > 10)).toBe(true);
      const lacking = doctor(['bpf', 'perfmon', 'sys_admin']);
      expect(lacking.capabilities.find((c) => c.name === 'CAP_NET_ADMIN')!.ok).toBe(false);
      expect(lacking.capture.mode).toBeNull();
      expect(lacking.capture.reasons.join('\n')).toMatch(/missing capabilities: CAP_NET_ADMIN/);
      // CAP_SYS_ADMIN alone stands in for BPF and PERFMON, as the kernel allows.
      const admin = doctor(['sys_admin', 'net_admin']);
      expect(admin.capabilities.find((c) => c.name === 'CAP_BPF')).toMatchObject({ ok: true, via: 'CAP_SYS_ADMIN' });
    }, 120_000);
  });
});
