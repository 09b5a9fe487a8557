/**
 * /proc readings the benches take of the processes they start and of the machine: CPU ticks,
 * memory, names and children. Every reader returns a neutral value when the process is gone.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** utime + stime of a process, in clock ticks; null when it is gone. */
export function readCpuTicks(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): utime = field 14, stime = field 15.
    return Number(f[11]) + Number(f[12]);
  } catch {
    return null;
  }
}

/** `kB` values of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...); 0 for a missing key, null when the process is gone. */
export function readStatusKb<K extends string>(pid: number, keys: readonly K[]): Record<K, number> | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const out = {} as Record<K, number>;
    for (const k of keys) out[k] = Number(new RegExp(`^${k}:\\s+(\\d+)\\s+kB`, 'm').exec(status)?.[1] ?? 0);
    return out;
  } catch {
    return null;
  }
}

/** The command name of a process ('' when it is gone). */
export function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Direct children of a process, over all its threads. */
export function childPids(pid: number): number[] {
  const out = new Set<number>();
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        for (const c of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) if (c) out.add(Number(c));
      } catch {
        /* thread gone */
      }
    }
  } catch {
    /* process gone */
  }
  return [...out];
}

export interface MachineTicks {
  busy: number;
  softirq: number;
  total: number;
}

/** Busy, softirq and total ticks of all CPUs (/proc/stat "cpu" line). */
export function readMachineTicks(): MachineTicks | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n').find((l) => l.startsWith('cpu '));
    if (!line) return null;
    // user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
    const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
    const total = f.reduce((s, x) => s + x, 0);
    return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), softirq: f[6] ?? 0, total };
  } catch {
    return null;
  }
}
