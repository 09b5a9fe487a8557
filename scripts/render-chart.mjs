#!/usr/bin/env node
// Renders deploy/helm/natlens like `helm template` (no helm binary here: tools/chart-render is the
// same engine, Go text/template + Sprig), after checking the merged values against
// values.schema.json as helm does.
//
//   node scripts/render-chart.mjs [RENDERER FLAGS]      the chart to stdout (release natlens, namespace natlens)
//   node scripts/render-chart.mjs --manifests [--out F] regenerate deploy/manifests/natlens.yaml
//   node scripts/render-chart.mjs --manifests --check   exit 1 if deploy/manifests/natlens.yaml is stale
//
// RENDERER FLAGS: -f FILE, --set K=V, --set-string K=V, -n NS, --kube-version V, --show-values, --notes.
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const CHART_DIR = join(ROOT, 'deploy', 'helm', 'natlens');
export const MANIFESTS = join(ROOT, 'deploy', 'manifests', 'natlens.yaml');
export const RELEASE = 'natlens';
export const NAMESPACE = 'natlens';
/** The plain manifests are the chart with default values, plus the Namespace helm would create. */
export const MANIFEST_FLAGS = ['--set', 'createNamespace=true'];
export const MANIFEST_HEADER =
  '# natlens, plain Kubernetes manifests: kubectl apply -f deploy/manifests/natlens.yaml\n' +
  '# Generated from deploy/helm/natlens with its default values (and createNamespace=true) by\n' +
  '#   node scripts/render-chart.mjs --manifests\n' +
  '# Do not edit: change the chart and regenerate. Other settings: see docs/deploy.md.\n';

class RenderError extends Error {}

/** Builds (once, cached) the renderer and returns its path. */
export function rendererBinary() {
  const r = spawnSync('bash', [join(ROOT, 'tools', 'chart-render', 'build.sh')], { encoding: 'utf8' });
  if (r.status !== 0) throw new RenderError(`${r.stderr || r.error?.message || 'tools/chart-render/build.sh failed'}`.trim());
  return r.stdout.trim();
}

function runRenderer(args) {
  const r = spawnSync(rendererBinary(), args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new RenderError(r.stderr.trim() || `chart-render exited with ${r.status}`);
  return r.stdout;
}

/** Checks values against values.schema.json with ajv; returns the error lines (empty when valid). */
export async function schemaErrors(values) {
  const { default: Ajv } = await import('ajv');
  const schema = JSON.parse(readFileSync(join(CHART_DIR, 'values.schema.json'), 'utf8'));
  const ajv = new Ajv({ allErrors: true, strict: false });
  const validate = ajv.compile(schema);
  if (validate(values)) return [];
  return validate.errors.map((e) => {
    const where = e.instancePath ? e.instancePath.slice(1).replaceAll('/', '.') : '(top level)';
    const extra = e.params?.additionalProperty ? ` '${e.params.additionalProperty}'` : e.params?.allowedValues ? `: ${e.params.allowedValues.join(', ')}` : '';
    return `${where}: ${e.message}${extra}`;
  });
}

/**
 * Renders the chart with the given renderer flags (values files, --set ...). Throws with helm-like
 * messages when the values break the schema or a template fails.
 */
export async function renderChart(flags = []) {
  const base = ['-n', NAMESPACE];
  const values = JSON.parse(runRenderer([...base, ...flags.filter((f) => f !== '--show-values' && f !== '--notes'), '--show-values', RELEASE, CHART_DIR]));
  const errors = await schemaErrors(values);
  if (errors.length) throw new RenderError(`values don't meet the specifications of the schema in deploy/helm/natlens/values.schema.json:\n- ${errors.join('\n- ')}`);
  return runRenderer([...base, ...flags, RELEASE, CHART_DIR]);
}

export async function renderManifests() {
  return MANIFEST_HEADER + (await renderChart(MANIFEST_FLAGS));
}

async function cli(argv) {
  let manifests = false;
  let check = false;
  let out;
  const flags = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--manifests') manifests = true;
    else if (a === '--check') check = true;
    else if (a === '--out') out = argv[++i];
    else if (a === '-h' || a === '--help') {
      const lines = readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1);
      const usage = lines.slice(0, lines.findIndex((l) => !l.startsWith('//')));
      process.stdout.write(`${usage.map((l) => l.replace(/^\/\/ ?/, '')).join('\n')}\n`);
      return 0;
    } else flags.push(a);
  }
  if (manifests && flags.length) throw new RenderError('--manifests renders the default values: give no renderer flags with it');
  const target = out ?? (manifests ? MANIFESTS : undefined);
  const text = manifests ? await renderManifests() : await renderChart(flags);
  if (check) {
    if (!target) throw new RenderError('--check needs --manifests or --out FILE');
    let current = '';
    try {
      current = readFileSync(target, 'utf8');
    } catch {}
    if (current !== text) {
      process.stderr.write(`render-chart: ${relative(ROOT, target)} is stale: run node scripts/render-chart.mjs --manifests\n`);
      return 1;
    }
    return 0;
  }
  if (target) {
    writeFileSync(target, text);
    process.stderr.write(`render-chart: wrote ${relative(ROOT, target)}\n`);
  } else process.stdout.write(text);
  return 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === resolve(process.argv[1])) {
  cli(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err) => {
      process.stderr.write(`render-chart: ${err instanceof RenderError ? err.message : err?.stack ?? err}\n`);
      process.exitCode = 1;
    },
  );
}
