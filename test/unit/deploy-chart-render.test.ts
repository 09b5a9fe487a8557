// tools/chart-render behaves like `helm template` where charts notice: value typing and merging,
// Helm's template functions, partials, document splitting, kind order, "# Source:" headers, errors.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildRenderer } from '../support/chart-render.js';

let binary: string;
let chart: string;
const render = (...args: string[]) => {
  const r = spawnSync(binary, [...args, 'rel', chart], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
};
const writeTemplate = (name: string, text: string) => writeFileSync(join(chart, 'templates', name), text);

beforeAll(() => {
  binary = buildRenderer();
  chart = mkdtempSync(join(tmpdir(), 'natlens-chart-'));
  mkdirSync(join(chart, 'templates'));
  writeFileSync(join(chart, 'Chart.yaml'), 'apiVersion: v2\nname: demo\nversion: 1.0.0\nappVersion: "2.3.4"\nkubeVersion: ">=1.20.0-0"\n');
  writeFileSync(join(chart, 'values.yaml'), 'a:\n  num: 1\n  keep: yes\n  list: [x, "on"]\nbig: 1000000\nname: demo\n');
  writeTemplate('_helpers.tpl', '{{- define "demo.full" -}}{{ .Release.Name }}-{{ .Chart.Name }}{{- end }}\nnot: rendered\n');
  writeTemplate('b-config.yaml', [
    'apiVersion: v1',
    'kind: ConfigMap',
    'metadata:',
    '  name: {{ include "demo.full" . }}',
    '  namespace: {{ .Release.Namespace }}',
    'data:',
    '  values: |',
    '    {{- toYaml .Values.a | nindent 4 }}',
    '  json: {{ toJson .Values.a | quote }}',
    '  kinds: {{ printf "%T %T %T" .Values.a.num .Values.big .Values.a.keep | quote }}',
    '  big: {{ .Values.big | quote }}',
    '  tpl: {{ tpl "{{ .Chart.AppVersion }}/{{ .Release.Service }}" . | quote }}',
    '  kube: {{ .Capabilities.KubeVersion.Version | quote }}',
    '  fromYaml: {{ (fromYaml "k: v").k | quote }}',
    '---',
    'apiVersion: v1',
    'kind: Namespace',
    'metadata:',
    '  name: {{ .Release.Namespace }}',
    '',
  ].join('\n'));
  writeTemplate('a-empty.yaml', '{{- if .Values.never }}\nkind: Secret\n{{- end }}\n');
  writeTemplate('NOTES.txt', 'notes for {{ .Release.Name }}\n');
});

afterAll(() => {
  if (chart) rmSync(chart, { recursive: true, force: true });
});

describe('chart renderer (helm template stand-in)', () => {
  it('prints manifests in helm install order with "# Source:" headers, no partials, no empty files, no NOTES', () => {
    const r = render('-n', 'ns');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const docs = r.out.split(/^---$/m).slice(1);
    expect(docs.map((d) => /^# Source: (.*)$/m.exec(d)?.[1])).toEqual(['demo/templates/b-config.yaml', 'demo/templates/b-config.yaml']);
    expect(docs.map((d) => /^kind: (.*)$/m.exec(d)?.[1])).toEqual(['Namespace', 'ConfigMap']);
    expect(r.out).not.toContain('not: rendered');
    expect(r.out).not.toContain('notes for');
    expect(r.out).toContain('name: rel-demo\n  namespace: ns\n');
  });

  it('loads values as helm does (YAML 1.1, JSON numbers) and formats toYaml like it', () => {
    const out = render().out;
    expect(out).toContain('  values: |\n    keep: true\n    list:\n    - x\n    - "on"\n    num: 1\n');
    expect(out).toContain('json: "{\\"keep\\":true,\\"list\\":[\\"x\\",\\"on\\"],\\"num\\":1}"');
    expect(out).toContain('kinds: "float64 float64 bool"');
    expect(out).toContain('big: "1e+06"'); // helm's well-known float rendering of large numbers
    expect(out).toContain('tpl: "2.3.4/Helm"');
    expect(out).toContain('kube: "v1.30.0"');
    expect(out).toContain('fromYaml: "v"');
  });

  it('merges -f files and --set like helm: tables merge, lists replace, null deletes, --set types ints and bools', () => {
    const file = join(chart, 'override.yaml');
    writeFileSync(file, 'a:\n  list: [z]\n  extra: 5\n');
    const values = JSON.parse(render('-f', file, '--set', 'a.num=7,a.keep=null,b.c={p,q},d[1].e=false,f=1.5,g=007', '--set-string', 'h=42', '--show-values').out);
    expect(values).toEqual({
      a: { num: 7, list: ['z'], extra: 5 },
      b: { c: ['p', 'q'] },
      d: [null, { e: false }],
      f: '1.5', g: '007', h: '42',
      big: 1000000, name: 'demo',
    });
  });

  it('renders NOTES.txt on request', () => {
    expect(render('--notes').out).toBe('notes for rel\n');
  });

  it('reports required and fail like helm, with the template position', () => {
    writeTemplate('c-required.yaml', 'x: {{ required "set .Values.must, please" .Values.must }}\n');
    try {
      const r = render();
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/execution error at \(demo\/templates\/c-required\.yaml:1:\d+\): set \.Values\.must, please/);
      expect(render('--set', 'must=here').code).toBe(0);
      writeTemplate('c-required.yaml', '{{ fail "not like this" }}\n');
      expect(render().err).toMatch(/execution error at \(demo\/templates\/c-required\.yaml:1:\d+\): not like this/);
    } finally {
      rmSync(join(chart, 'templates', 'c-required.yaml'));
    }
  });

  it('has no env or expandenv (helm removes them), and checks the chart\'s kubeVersion', () => {
    writeTemplate('d-env.yaml', 'x: {{ env "HOME" }}\n');
    try {
      const r = render();
      expect(r.code).toBe(1);
      expect(r.err).toContain('function "env" not defined');
    } finally {
      rmSync(join(chart, 'templates', 'd-env.yaml'));
    }
    const old = render('--kube-version', 'v1.19.0');
    expect(old.code).toBe(1);
    expect(old.err).toContain('chart requires kubeVersion: >=1.20.0-0 which is incompatible with Kubernetes v1.19.0');
  });
});
