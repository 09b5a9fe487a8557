/** Kernel feature probe: asks natlens-probe what this kernel offers and decides how capture can run. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync } from 'node:fs';
import { BPF_OBJECT, PROBE_BIN } from '../util/paths.js';
import { ProbeError, type CaptureMode } from './probe-process.js';

const run = promisify(execFile);

export interface FeatureResult {
  ok: boolean;
  detail: string;
}

export const FEATURE_NAMES = ['btf', 'bpf_syscall', 'clsact', 'ringbuf', 'ct_kfuncs', 'ctnetlink_events', 'kprobes', 'fentry'] as const;
export type FeatureName = (typeof FEATURE_NAMES)[number];
export type KernelFeatures = Record<FeatureName, FeatureResult>;

export async function probeFeatures(opts: { binary?: string; object?: string } = {}): Promise<KernelFeatures> {
  const binary = opts.binary ?? PROBE_BIN;
  if (!existsSync(binary)) throw new ProbeError(`natlens-probe not found at ${binary}: run 'npm run build'`);
  let stdout: string;
  try {
    ({ stdout } = await run(binary, ['features', '--obj', opts.object ?? BPF_OBJECT], { timeout: 20_000 }));
  } catch (err) {
    throw new ProbeError('natlens-probe features failed', { cause: err });
  }
  const parsed = JSON.parse(stdout) as Partial<KernelFeatures>;
  const out = {} as KernelFeatures;
  for (const name of FEATURE_NAMES) out[name] = parsed[name] ?? { ok: false, detail: 'not reported by natlens-probe' };
  return out;
}

export interface CapturePlan {
  /** null: capture cannot run here. */
  mode: CaptureMode | null;
  reasons: string[];
}

/**
 * tc + conntrack kfuncs gives full records (ISN, interface, drops); ctnetlink alone still gives
 * both tuples of every connection, without the ISN that stitches SNAT hops and without drops.
 */
export function planCapture(f: KernelFeatures): CapturePlan {
  const tcNeeds: FeatureName[] = ['btf', 'bpf_syscall', 'clsact', 'ringbuf', 'ct_kfuncs'];
  const missing = tcNeeds.filter((n) => !f[n].ok);
  if (missing.length === 0) return { mode: 'tc', reasons: [] };
  const reasons = missing.map((n) => `${n}: ${f[n].detail}`);
  if (f.ctnetlink_events.ok) {
    return { mode: 'ctnetlink', reasons: [...reasons, 'falling back to conntrack events: no TCP ISN (cross-node stitching by tuple and time only), no drop detection'] };
  }
  return { mode: null, reasons: [...reasons, `ctnetlink_events: ${f.ctnetlink_events.detail}`] };
}
