/** Why an integration suite cannot run here (printed by the suite), or null when it can. */
import { existsSync } from 'node:fs';
import { BPF_OBJECT, PROBE_BIN } from '../../../src/util/paths.js';
import { labScriptPath } from '../../../src/lab/lab.js';

export function skipReason(): string | null {
  if (process.getuid?.() !== 0) return 'needs root (eBPF, network namespaces, netfilter)';
  for (const p of [PROBE_BIN, BPF_OBJECT]) if (!existsSync(p)) return `${p} is missing: run npm run build`;
  try {
    labScriptPath('echo-server');
  } catch (err) {
    return String(err);
  }
  return null;
}
