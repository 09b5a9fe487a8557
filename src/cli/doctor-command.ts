import type { Command } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import { FEATURE_NAMES, planCapture, probeFeatures, type KernelFeatures } from '../probe/features.js';
import { BPF_OBJECT, PROBE_BIN } from '../util/paths.js';

/** Capabilities the agent needs (bit numbers from linux/capability.h). */
const NEEDED_CAPS: [string, number][] = [['CAP_NET_ADMIN', 12], ['CAP_SYS_ADMIN', 21], ['CAP_PERFMON', 38], ['CAP_BPF', 39]];

export interface DoctorReport {
  binaries: { probe: string; object: string; ok: boolean; detail: string };
  capabilities: { name: string; ok: boolean }[];
  features: KernelFeatures | null;
  capture: { mode: string | null; reasons: string[] };
}

function effectiveCaps(): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? BigInt(`0x${m[1]}`) : 0n;
}

export async function runDoctor(): Promise<DoctorReport> {
  const missing = [PROBE_BIN, BPF_OBJECT].filter((p) => !existsSync(p));
  const caps = effectiveCaps();
  const capabilities = NEEDED_CAPS.map(([name, bit]) => ({ name, ok: (caps & (1n << BigInt(bit))) !== 0n }));
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
  const lacking = capabilities.filter((c) => !c.ok).map((c) => c.name);
  // CAP_SYS_ADMIN covers BPF and PERFMON on older kernels, so only a missing NET_ADMIN or all three is fatal.
  if (lacking.includes('CAP_NET_ADMIN') || (lacking.includes('CAP_BPF') && lacking.includes('CAP_SYS_ADMIN'))) {
    report.capture.mode = null;
    report.capture.reasons.push(`missing capabilities: ${lacking.join(', ')} (run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)`);
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
        text += '\ncapabilities\n' + r.capabilities.map((c) => line(c.ok, c.name, c.ok ? 'effective' : 'missing')).join('');
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
