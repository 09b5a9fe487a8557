/**
 * Read-only SQL on a collector's embedded data directory, in a child process: chdb binds one data
 * directory per process (and the collector's own lock must be released first: stop it before).
 */
import { spawn } from 'node:child_process';
import { PACKAGE_ROOT } from '../../../src/util/paths.js';

const SCRIPT = `
const [dir, query] = process.argv.slice(1);
const { createClient } = await import('@clickhouse/client');
const { createChdbConnection } = await import('chdb/connection');
const client = createClient({ connection: createChdbConnection({ path: dir }) });
try {
  const rs = await client.query({ query, format: 'JSONEachRow' });
  process.stdout.write(JSON.stringify(await rs.json()));
} finally {
  await client.close();
}`;

export async function queryDataDir<T>(dataDir: string, query: string): Promise<T[]> {
  const child = spawn(process.execPath, ['--input-type=module', '-e', SCRIPT, dataDir, query], { cwd: PACKAGE_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  clearTimeout(timer);
  if (code !== 0) throw new Error(`query on ${dataDir} failed (exit ${code}): ${err.trim()}\n${query}`);
  return JSON.parse(out) as T[];
}
