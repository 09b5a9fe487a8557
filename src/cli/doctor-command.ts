import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { FEATURE_NAMES, planCapture, probeFeatures, type KernelFeatures } from '../probe/features.js';
import { BPF_OBJECT, PROBE_BIN } from '../util/paths.js';
import { effectiveCapabilities, hasCapability, missingCapabilities, neededCapabilities } from '../agent/capabilities.js';

export interface DoctorReport {
  binaries: { probe: string; object: string; ok: boolean; detail: string };
  /** What `natlens agent` needs (src/agent/capabilities.ts), capture in another namespace (--netns) included. */
  capabilities: { name: string; ok: boolean; purpose: string; via?: string }[];
  features: KernelFeatures | null;
  capture: { mode: string | null; reasons: string[] };
}

export async function runDoctor(): Promise<DoctorReport> {
  const missing = [PROBE_BIN, BPF_OBJECT].filter((p) => !existsSync(p));
  const caps = effectiveCapabilities();
  const needs = neededCapabilities({ mode: 'auto', netns: 'NETNS' });
  const lackingNeeds = new Set(missingCapabilities(needs, caps));
  const capabilities = needs.map((n) => ({
    name: n.name,
    ok: !lackingNeeds.has(n),
    purpose: n.name === 'CAP_SYS_ADMIN' ? 'only with --netns (setns) or --mode auto (feature probe in a throw-away namespace)' : n.purpose,
    via: hasCapability(caps, n.name) ? undefined : n.alternatives.find((a) => hasCapability(caps, a)),
  }));
  const report: DoctorReport = {
    binaries: { probe: PROBE_BIN, object: BPF_OBJECT, ok: missing.length === 0, detail: missing.length ? `missing ${missing.join(', ')}: run 'npm run build'` : 'present' },
    capabilities,
    features: null,
    capture: { mode: null, reasons: [] },
  };
  if (missing.length) {
    report.capture.reasons.push(report.binaries.detail);
    return report;
  }
  report.features = await probeFeatures();
  report.capture = planCapture(report.features);
  // CAP_SYS_ADMIN is only needed with --netns or --mode auto: --mode tc in the node's own namespace runs without it.
  const lacking = capabilities.filter((c) => !c.ok && c.name !== 'CAP_SYS_ADMIN').map((c) => c.name);
  if (lacking.length) {
    report.capture.mode = null;
    report.capture.reasons.push(`missing capabilities: ${lacking.join(', ')} (run as root, or grant ${needs.filter((n) => n.name !== 'CAP_SYS_ADMIN').map((n) => n.name).join(', ')}; see docs/security.md)`);
  }
  return report;
}

export function registerDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .summary('check what this kernel offers and whether capture can run')
    .description('Probes BTF, the bpf() syscall, tc/clsact, ring buffers, the conntrack kfuncs and conntrack\nevents, without touching the host\'s network (probes run in a throw-away namespace),\nand says exactly why capture cannot run where it cannot. Exit code 0 when capture can run.')
    .option('--json', 'print the report as one JSON object')
    .action(async (opts: { json?: boolean }) => {
      const r = await runDoctor();
      if (opts.json) {
        process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
      } else {
        const line = (ok: boolean, name: string, detail: string): string => `  ${ok ? 'ok  ' : 'FAIL'}  ${name.padEnd(18)} ${detail}\n`;
        let text = 'natlens doctor\n\nbinaries\n' + line(r.binaries.ok, 'natlens-probe', r.binaries.detail);
        text += '\ncapabilities (natlens agent)\n' + r.capabilities.map((c) => line(c.ok, c.name, `${c.ok ? (c.via ? `via ${c.via}` : 'effective') : 'missing'}: ${c.purpose}`)).join('');
        if (r.features) {
          // kprobes and fentry are reported for completeness: natlens does not need them.
          const informational = new Set(['kprobes', 'fentry']);
          text += '\nkernel\n' + FEATURE_NAMES.map((n) => {
            const f = r.features![n];
            if (informational.has(n) && !f.ok) return `  n/a   ${n.padEnd(18)} ${f.detail} (not needed: natlens uses tc + conntrack)\n`;
            return line(f.ok, n, f.detail);
          }).join('');
        }
        text += r.capture.mode === 'tc'
          ? '\ncapture: full (tc/clsact + conntrack kfuncs): pre- and post-NAT tuples, TCP ISN, drops, ends\n'
          : r.capture.mode === 'ctnetlink'
            ? `\ncapture: degraded (conntrack events only)\n${r.capture.reasons.map((x) => `  - ${x}\n`).join('')}`
            : `\ncapture: CANNOT RUN\n${r.capture.reasons.map((x) => `  - ${x}\n`).join('')}`;
        process.stdout.write(text);
      }
      if (r.capture.mode === null) process.exitCode = 1;
    });
}
