// Renders deploy/helm/natlens through scripts/render-chart.mjs (the `helm template` stand-in, with
// the values schema check) and parses the stream into objects, each with its "# Source:" file.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import YAML from 'yaml';
import { PACKAGE_ROOT } from '../../src/util/paths.js';

export const RENDER_SCRIPT = join(PACKAGE_ROOT, 'scripts', 'render-chart.mjs');
export const CHART_DIR = join(PACKAGE_ROOT, 'deploy', 'helm', 'natlens');

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
}

export interface Rendered {
  text: string;
  objects: K8sObject[];
  /** The template file each object came from, index for index. */
  sources: string[];
}

export interface RenderOptions {
  /** helm --set expressions. */
  set?: string[];
  /** A values file's content (helm -f). */
  values?: Record<string, unknown>;
  /** Other flags for scripts/render-chart.mjs. */
  flags?: string[];
}

export class ChartRenderError extends Error {}

function runScript(args: string[]): string {
  const r = spawnSync(process.execPath, [RENDER_SCRIPT, ...args], { encoding: 'utf8', timeout: 300_000, maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new ChartRenderError(`render-chart ${args.join(' ')} failed (exit ${r.status}):\n${r.stderr || r.error?.message}`);
  return r.stdout;
}

function withValues<T>(opts: RenderOptions, fn: (flags: string[]) => T): T {
  const flags = [...(opts.set ?? []).flatMap((s) => ['--set', s]), ...(opts.flags ?? [])];
  if (!opts.values) return fn(flags);
  const dir = mkdtempSync(join(tmpdir(), 'natlens-values-'));
  try {
    const file = join(dir, 'values.yaml');
    writeFileSync(file, YAML.stringify(opts.values));
    return fn(['-f', file, ...flags]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Parses a `helm template` stream: "---\n# Source: FILE\n<object>" per document. */
export function parseStream(text: string): Rendered {
  const objects: K8sObject[] = [];
  const sources: string[] = [];
  for (const doc of text.split(/^---$/m).slice(1)) {
    const source = /^# Source: (\S+)$/m.exec(doc)?.[1];
    if (!source) throw new ChartRenderError(`document without a "# Source:" line:\n${doc}`);
    const obj = YAML.parse(doc) as K8sObject | null;
    if (!obj) throw new ChartRenderError(`${source}: empty document in the stream`);
    objects.push(obj);
    sources.push(source);
  }
  return { text, objects, sources };
}

export function renderChart(opts: RenderOptions = {}): Rendered {
  return withValues(opts, (flags) => parseStream(runScript(flags)));
}

/** The values the templates see (chart defaults < values file < --set), as JSON. */
export function mergedValues(opts: RenderOptions = {}): Record<string, unknown> {
  return withValues(opts, (flags) => JSON.parse(runScript([...flags, '--show-values'])) as Record<string, unknown>);
}

/** The rendered NOTES.txt. */
export function renderNotes(opts: RenderOptions = {}): string {
  return withValues(opts, (flags) => runScript([...flags, '--notes']));
}

/** Runs scripts/render-chart.mjs as is; for exit codes and messages. */
export function runRenderScript(args: string[]): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [RENDER_SCRIPT, ...args], { encoding: 'utf8', timeout: 300_000, maxBuffer: 64 << 20 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Builds the renderer if needed; throws with build.sh's explanation when Go or Sprig is missing. */
export function buildRenderer(): string {
  const r = spawnSync('bash', [join(PACKAGE_ROOT, 'tools', 'chart-render', 'build.sh')], { encoding: 'utf8', timeout: 300_000 });
  if (r.status !== 0) throw new ChartRenderError(`cannot build the chart renderer (tools/chart-render):\n${r.stderr || r.error?.message}`);
  return r.stdout.trim();
}
