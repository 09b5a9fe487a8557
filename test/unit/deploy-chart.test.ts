// deploy/: the Helm chart rendered the way `helm template` renders it (tools/chart-render: Go
// text/template + Sprig), every object checked against the Kubernetes API schemas, the properties
// that matter asserted, the values schema, the plain manifests, the image files, the kubectl plugin.
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { Ajv } from 'ajv';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { PersistentVolumeClaim } from 'kubernetes-models/v1/PersistentVolumeClaim';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { ClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import { ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import { beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { AGENT_SETTINGS, COLLECTOR_SETTINGS } from '../../src/config.js';
import { PeerRing } from '../../src/collector/peer-ring.js';
import { rolesOfSubjectAltName } from '../../src/transport/tls.js';
import { BPF_OBJECT, PACKAGE_ROOT, PROBE_BIN } from '../../src/util/paths.js';
import {
  CHART_DIR, buildRenderer, mergedValues, parseStream, renderChart, renderNotes, runRenderScript,
  type K8sObject, type Rendered,
} from '../support/chart-render.js';
import { CertManagerCertificate, CertManagerIssuer, validateCertManager } from '../support/cert-manager-schema.js';

// ---- validation against the Kubernetes API ----

interface Validatable { validate(): void }
/** apiVersion/kind -> kubernetes-models class. A kind missing here fails the test: add it, never skip it. */
const MODELS: Record<string, new (data: never) => Validatable> = {
  'v1/Namespace': Namespace,
  'v1/ServiceAccount': ServiceAccount,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'v1/PersistentVolumeClaim': PersistentVolumeClaim,
  'apps/v1/DaemonSet': DaemonSet,
  'apps/v1/Deployment': Deployment,
  'apps/v1/StatefulSet': StatefulSet,
  'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding,
  'cert-manager.io/v1/Certificate': CertManagerCertificate,
  'cert-manager.io/v1/Issuer': CertManagerIssuer,
};

interface AttributeType { baseName: string; type: string }
type ModelClass = { getAttributeTypeMap?: () => AttributeType[] };

/**
 * Fields the API does not know (what `kubectl apply --validate=strict` rejects, and what
 * kubernetes-models' schemas let through): walks the object along @kubernetes/client-node's
 * generated type maps of the same API.
 */
function unknownFields(value: unknown, type: string, path: string, out: string[]): void {
  if (value === null || value === undefined) return;
  const array = /^Array<(.+)>$/.exec(type);
  if (array) {
    if (Array.isArray(value)) value.forEach((v, i) => unknownFields(v, array[1]!, `${path}[${i}]`, out));
    return;
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    for (const [k, v] of Object.entries(value as object)) unknownFields(v, map[1]!, `${path}.${k}`, out);
    return;
  }
  const model = (k8s as unknown as Record<string, ModelClass | undefined>)[type];
  if (!model?.getAttributeTypeMap || typeof value !== 'object') return; // string, number, IntOrString, ...
  const attributes = model.getAttributeTypeMap();
  for (const [k, v] of Object.entries(value as object)) {
    const attribute = attributes.find((a) => a.baseName === k);
    if (!attribute) out.push(`${path}.${k}`);
    else unknownFields(v, attribute.type, `${path}.${k}`, out);
  }
}

function validateObject(obj: K8sObject, source: string): void {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const Model = MODELS[key];
  if (!Model) throw new Error(`${source}: ${key} has no Kubernetes schema in this test (add its kubernetes-models class to MODELS)`);
  try {
    new Model(obj as never).validate();
  } catch (err) {
    throw new Error(`${source}: ${key} ${obj.metadata?.name} is invalid: ${(err as Error).message}`);
  }
  const unknown: string[] = [];
  unknownFields(obj, `V1${obj.kind}`, obj.kind, unknown);
  if (unknown.length) throw new Error(`${source}: ${key} ${obj.metadata.name} has fields the API does not know: ${unknown.join(', ')}`);
}

const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding']);

/** Every object valid, namespaced ones in the release namespace, no two with the same kind and name. */
function validateAll(r: Rendered): void {
  expect(r.objects.length).toBeGreaterThan(0);
  const seen = new Set<string>();
  r.objects.forEach((obj, i) => {
    validateObject(obj, r.sources[i]!);
    if (!CLUSTER_SCOPED.has(obj.kind)) expect(obj.metadata.namespace, `${obj.kind} ${obj.metadata.name}`).toBe('natlens');
    const id = `${obj.kind}/${obj.metadata.name}`;
    expect(seen.has(id), `${id} rendered twice`).toBe(false);
    seen.add(id);
  });
}

// ---- accessors ----

// Rendered objects: their shape is checked against the API above, so the assertions index freely.
type Obj = Record<string, any>;

function find(r: Rendered, kind: string, name?: string): Obj {
  const found = r.objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, rendered ${found.length}`);
  return found[0] as Obj;
}
const kinds = (r: Rendered): string[] => r.objects.map((o) => `${o.kind}/${o.metadata.name}`).sort();
const podSpec = (workload: Obj): Obj => workload.spec.template.spec;
const container = (workload: Obj, name: string): Obj => {
  const c = (podSpec(workload).containers as Obj[]).find((x) => x.name === name);
  if (!c) throw new Error(`no container ${name}`);
  return c;
};
const env = (c: Obj): Map<string, Obj> => new Map((c.env as Obj[]).map((e) => [e.name as string, e]));
const b64 = (s: string): string => Buffer.from(s, 'base64').toString('utf8');

const ALL_RENDERS: Array<[string, Parameters<typeof renderChart>[0]]> = [
  ['default values', {}],
  ['clickhouse.mode=statefulset', { set: ['clickhouse.mode=statefulset'] }],
  ['clickhouse.mode=statefulset without persistence, fixed password', { set: ['clickhouse.mode=statefulset', 'clickhouse.statefulset.persistence.enabled=false', 'clickhouse.statefulset.password=s3cret'] }],
  ['clickhouse.mode=external with a URL', { set: ['clickhouse.mode=external', 'clickhouse.external.url=http://natlens:pw@ch.example:8123'] }],
  ['clickhouse.mode=external with an existing Secret', { set: ['clickhouse.mode=external', 'clickhouse.external.existingSecret=my-ch', 'clickhouse.external.existingSecretKey=dsn'] }],
  ['collector.replicas=2', { set: ['collector.replicas=2'] }],
  ['collector.replicas=3 with persistence', { set: ['collector.replicas=3', 'collector.persistence.enabled=true', 'collector.persistence.storageClass=fast'] }],
  ['collector persistence', { set: ['collector.persistence.enabled=true'] }],
  ['agent.privileged=true', { set: ['agent.privileged=true'] }],
  ['custom tolerations and scheduling', {
    values: {
      agent: { tolerations: [{ key: 'dedicated', operator: 'Equal', value: 'edge', effect: 'NoSchedule' }], priorityClassName: 'system-node-critical', podAnnotations: { a: 'b' }, extraEnv: [{ name: 'NATLENS_DRAIN', value: '10ms' }] },
      collector: { tolerations: [{ operator: 'Exists' }], nodeSelector: { pool: 'infra' }, affinity: { nodeAffinity: {} } },
      imagePullSecrets: [{ name: 'ghcr' }],
    },
  }],
  ['capture filters, bpffs off, a collector elsewhere', { set: ['agent.capture.ifaces=^(eth|ens)', 'agent.capture.excludeIfaces=^lxc', 'agent.bpffs=false', 'agent.collectorAddress=collector.example:7070', 'agent.capture.mode=ctnetlink'] }],
  ['createNamespace=true, other release names', { set: ['createNamespace=true', 'fullnameOverride=nl'] }],
  ['metrics off', { set: ['agent.metrics.enabled=false', 'collector.metrics.enabled=false'] }],
  ['metrics on other ports, debug logs, annotations', { set: ['agent.metrics.port=19469', 'collector.metrics.port=19470', 'agent.logLevel=debug', 'collector.logLevel=warn', 'collector.replicas=2'], values: { agent: { podAnnotations: { 'prometheus.io/scrape': 'false', team: 'net' } } } }],
  ['tls.enabled=false (plain text, lab)', { set: ['tls.enabled=false'] }],
  ['TLS from existing Secrets, a query token Secret', { set: ['tls.certManager.enabled=false', 'tls.existingSecrets.agent=agent-tls', 'tls.existingSecrets.collector=collector-tls', 'query.tokenSecret=natlens-tokens'] }],
  ['TLS by a ClusterIssuer of the user, peers', { set: ['tls.certManager.issuerRef.name=corp-ca', 'tls.certManager.issuerRef.kind=ClusterIssuer', 'collector.replicas=3', 'tls.serverName=collector.example'] }],
  ['capture.mode=auto, extra capabilities', { set: ['agent.capture.mode=auto', 'agent.extraCapabilities={SYS_RESOURCE}'] }],
];

/** What `natlens agent` needs in its default capture mode (tc), verified by test/integration/capabilities.test.ts. */
const AGENT_CAPS = ['BPF', 'NET_ADMIN', 'PERFMON'];

describe('helm chart deploy/helm/natlens', () => {
  let defaults: Rendered;
  beforeAll(() => {
    // Fails here, with the reason and the fix (bash scripts/setup.sh), when Go or Sprig is missing.
    buildRenderer();
    defaults = renderChart();
  });

  it.each(ALL_RENDERS)('renders valid Kubernetes objects with %s', (_name, opts) => {
    validateAll(renderChart(opts));
  });

  it('fails the test on an object kind it has no schema for', () => {
    const odd = parseStream('---\n# Source: natlens/templates/x.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n');
    expect(() => validateAll(odd)).toThrow(/v1\/ConfigMap has no Kubernetes schema/);
  });

  it('catches what the API schema rejects: a wrong type and an unknown field', () => {
    const ds = find(defaults, 'DaemonSet');
    const wrongType = structuredClone(ds);
    wrongType.spec.template.spec.hostNetwork = 'yes';
    expect(() => validateObject(wrongType as K8sObject, 't')).toThrow(/hostNetwork must be boolean/);
    const unknown = structuredClone(ds);
    unknown.spec.template.spec.containers[0].securityContext.capabilites = {};
    expect(() => validateObject(unknown as K8sObject, 't')).toThrow(/securityContext\.capabilites/);
  });

  it('deploys, by default, the agent, the collector with its embedded store, and their RBAC', () => {
    expect(kinds(defaults)).toEqual([
      'Certificate/natlens-agent', 'Certificate/natlens-ca', 'Certificate/natlens-collector', 'Certificate/natlens-query',
      'ClusterRole/natlens-agent', 'ClusterRole/natlens-collector',
      'ClusterRoleBinding/natlens-agent', 'ClusterRoleBinding/natlens-collector',
      'DaemonSet/natlens-agent', 'Deployment/natlens-collector',
      'Issuer/natlens-ca', 'Issuer/natlens-selfsigned',
      'Service/natlens-collector', 'ServiceAccount/natlens-agent', 'ServiceAccount/natlens-collector',
    ]);
    // helm template's order: kinds in Helm's install order (custom resources last), with "# Source:" headers.
    expect(defaults.objects.map((o) => o.kind)).toEqual([
      'ServiceAccount', 'ServiceAccount', 'ClusterRole', 'ClusterRole', 'ClusterRoleBinding', 'ClusterRoleBinding',
      'Service', 'DaemonSet', 'Deployment', 'Certificate', 'Certificate', 'Certificate', 'Certificate', 'Issuer', 'Issuer',
    ]);
    expect(defaults.text.startsWith('---\n# Source: natlens/templates/')).toBe(true);
  });

  it('labels every object with the recommended labels', () => {
    for (const o of defaults.objects) {
      const labels = o.metadata.labels ?? {};
      for (const l of ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/version', 'app.kubernetes.io/managed-by']) {
        expect(labels[l], `${o.kind}/${o.metadata.name} ${l}`).toBeTruthy();
      }
      expect(labels['app.kubernetes.io/component'], `${o.kind}/${o.metadata.name}`).toMatch(/^(agent|collector|tls)$/);
    }
  });

  describe('agent DaemonSet', () => {
    it('runs in the host network namespace, resolving cluster names', () => {
      const spec = podSpec(find(defaults, 'DaemonSet', 'natlens-agent'));
      expect(spec.hostNetwork).toBe(true);
      expect(spec.dnsPolicy).toBe('ClusterFirstWithHostNet');
      expect(spec.serviceAccountName).toBe('natlens-agent');
    });

    it('is not privileged by default: root with exactly BPF, PERFMON, NET_ADMIN (capture.mode tc), all else dropped', () => {
      expect(defaults.text).not.toMatch(/privileged: true/);
      const sc = container(find(defaults, 'DaemonSet'), 'agent').securityContext;
      expect(sc.privileged).toBe(false);
      expect(sc.allowPrivilegeEscalation).toBe(false);
      expect([...sc.capabilities.add].sort()).toEqual(AGENT_CAPS);
      expect(sc.capabilities.drop).toEqual(['ALL']);
      expect(sc.runAsUser).toBe(0);
      expect(sc.readOnlyRootFilesystem).toBe(true);
      expect(podSpec(find(defaults, 'DaemonSet')).hostPID).toBeUndefined();
    });

    it('adds what each capture mode needs, and extraCapabilities, nothing else', () => {
      const capsOf = (set: string[]): string[] => [...container(find(renderChart({ set }), 'DaemonSet'), 'agent').securityContext.capabilities.add].sort();
      expect(capsOf(['agent.capture.mode=auto'])).toEqual(['BPF', 'NET_ADMIN', 'PERFMON', 'SYS_ADMIN']);
      expect(capsOf(['agent.capture.mode=ctnetlink'])).toEqual(['NET_ADMIN']);
      expect(capsOf(['agent.extraCapabilities={SYS_RESOURCE}'])).toEqual(['BPF', 'NET_ADMIN', 'PERFMON', 'SYS_RESOURCE']);
      expect(env(container(find(defaults, 'DaemonSet'), 'agent')).get('NATLENS_CAPTURE_MODE')!.value).toBe('tc');
    });

    it('switches to a privileged container with agent.privileged=true', () => {
      const sc = container(find(renderChart({ set: ['agent.privileged=true'] }), 'DaemonSet'), 'agent').securityContext;
      expect(sc.privileged).toBe(true);
      expect(sc.capabilities).toBeUndefined();
      expect(sc.allowPrivilegeEscalation).toBeUndefined(); // false would contradict privileged
    });

    it('mounts BTF read-only, the host bpffs, and a writable lock dir', () => {
      const ds = find(defaults, 'DaemonSet');
      const volumes = new Map((podSpec(ds).volumes as Obj[]).map((v) => [v.name as string, v]));
      const mounts = new Map((container(ds, 'agent').volumeMounts as Obj[]).map((m) => [m.mountPath as string, m]));
      const btf = mounts.get('/sys/kernel/btf')!;
      expect(btf.readOnly).toBe(true);
      expect(volumes.get(btf.name)!.hostPath).toEqual({ path: '/sys/kernel/btf', type: 'Directory' });
      expect(volumes.get(mounts.get('/sys/fs/bpf')!.name)!.hostPath).toEqual({ path: '/sys/fs/bpf', type: 'DirectoryOrCreate' });
      const lockDir = env(container(ds, 'agent')).get('NATLENS_LOCK_DIR')!.value;
      expect(volumes.get(mounts.get(lockDir)!.name)!.emptyDir).toEqual({});
      // no other host path
      expect((podSpec(ds).volumes as Obj[]).filter((v) => v.hostPath).map((v) => v.hostPath.path).sort()).toEqual(['/sys/fs/bpf', '/sys/kernel/btf']);
      // the only other volumes: its certificate, read-only
      expect((podSpec(ds).volumes as Obj[]).filter((v) => !v.hostPath && !v.emptyDir).map((v) => v.secret?.secretName)).toEqual(['natlens-agent-tls']);
      expect(mounts.get('/etc/natlens/tls')!.readOnly).toBe(true);
    });

    it('tolerates every taint by default, and takes custom tolerations', () => {
      expect(podSpec(find(defaults, 'DaemonSet')).tolerations).toEqual([{ operator: 'Exists' }]);
      const tolerations = [{ key: 'dedicated', operator: 'Equal', value: 'edge', effect: 'NoSchedule' }];
      expect(podSpec(find(renderChart({ values: { agent: { tolerations } } }), 'DaemonSet')).tolerations).toEqual(tolerations);
      expect(podSpec(find(renderChart({ values: { agent: { tolerations: [] } } }), 'DaemonSet')).tolerations).toBeUndefined();
    });

    it('is configured through NATLENS_* variables the agent knows, with values it accepts', () => {
      const c = container(find(defaults, 'DaemonSet'), 'agent');
      expect(c.args).toEqual(['agent']);
      const vars = env(c);
      expect(vars.get('NATLENS_NODE')!.valueFrom).toEqual({ fieldRef: { fieldPath: 'spec.nodeName' } });
      expect(vars.get('NATLENS_KUBERNETES')!.value).toBe('true');
      const settings = new Map(Object.values(AGENT_SETTINGS).map((s) => [s.env as string, s]));
      for (const [name, e] of vars) {
        const setting = settings.get(name);
        if (!setting && name === 'NATLENS_KUBERNETES') continue; // the Kubernetes watch, on a natlens that does not read it yet
        expect(setting, `${name} is not an agent setting`).toBeDefined();
        if (e.value !== undefined) expect(() => setting!.parse(e.value, name)).not.toThrow();
      }
    });

    it('streams to the collector Service, by its cluster DNS name and port', () => {
      const address = env(container(find(defaults, 'DaemonSet'), 'agent')).get('NATLENS_COLLECTOR')!.value as string;
      const svc = find(defaults, 'Service', 'natlens-collector');
      expect(address).toBe(`${svc.metadata.name}.${svc.metadata.namespace}.svc:${svc.spec.ports[0].port}`);
      expect(() => AGENT_SETTINGS.collector.parse(address, 'NATLENS_COLLECTOR')).not.toThrow();
    });
  });

  describe('own metrics, health and logs', () => {
    const workloads = (r: Rendered): [[string, Obj, Obj], [string, Obj, Obj]] => [
      ['agent', find(r, 'DaemonSet'), container(find(r, 'DaemonSet'), 'agent')],
      ['collector', find(r, r.objects.some((o) => o.kind === 'Deployment') ? 'Deployment' : 'StatefulSet', 'natlens-collector'), container(find(r, r.objects.some((o) => o.kind === 'Deployment') ? 'Deployment' : 'StatefulSet', 'natlens-collector'), 'collector')],
    ];

    it.each<[string, Parameters<typeof renderChart>[0], Record<string, number>]>([
      ['default values', {}, { agent: 9469, collector: 9470 }],
      ['other ports', { set: ['agent.metrics.port=19469', 'collector.metrics.port=19470'] }, { agent: 19469, collector: 19470 }],
    ])('serves /metrics, probes /healthz (liveness) and /readyz (readiness) on the port NATLENS_METRICS_LISTEN binds (%s)', (_name, opts, ports) => {
      for (const [component, workload, c] of workloads(renderChart(opts))) {
        const port = ports[component]!;
        const listen = env(c).get('NATLENS_METRICS_LISTEN')!.value as string;
        expect(listen, component).toBe(`0.0.0.0:${port}`);
        const settings = component === 'agent' ? AGENT_SETTINGS : COLLECTOR_SETTINGS;
        expect(settings.metricsListen.parse(listen, 'NATLENS_METRICS_LISTEN'), component).toBe(listen);
        const metricsPort = (c.ports as Obj[]).find((p) => p.name === 'metrics');
        expect(metricsPort, component).toEqual({ name: 'metrics', containerPort: port, protocol: 'TCP' });
        expect(c.livenessProbe.httpGet, component).toEqual({ path: '/healthz', port: 'metrics' });
        expect(c.readinessProbe.httpGet, component).toEqual({ path: '/readyz', port: 'metrics' });
        expect(c.livenessProbe.tcpSocket, component).toBeUndefined();
        expect(c.readinessProbe.periodSeconds, component).toBeLessThanOrEqual(10);
        expect(c.livenessProbe.timeoutSeconds, component).toBeGreaterThanOrEqual(1);
        expect(workload.spec.template.metadata.annotations, component).toEqual({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': String(port), 'prometheus.io/path': '/metrics' });
      }
    });

    it('lets Prometheus find the collector through its Service too', () => {
      const svc = find(renderChart({ set: ['collector.metrics.port=19470'] }), 'Service', 'natlens-collector');
      expect(svc.metadata.annotations).toEqual({ 'prometheus.io/scrape': 'true', 'prometheus.io/port': '19470', 'prometheus.io/path': '/metrics' });
      const port = (svc.spec.ports as Obj[]).find((p) => p.name === 'metrics');
      expect(port).toEqual({ name: 'metrics', port: 19470, targetPort: 'metrics', protocol: 'TCP' });
    });

    it('with metrics off: no port, no annotations, no HTTP probes (the collector falls back to its gRPC port)', () => {
      const r = renderChart({ set: ['agent.metrics.enabled=false', 'collector.metrics.enabled=false'] });
      for (const [component, workload, c] of workloads(r)) {
        expect(env(c).has('NATLENS_METRICS_LISTEN'), component).toBe(false);
        expect(((c.ports ?? []) as Obj[]).some((p) => p.name === 'metrics'), component).toBe(false);
        expect(workload.spec.template.metadata.annotations, component).toBeUndefined();
      }
      const [[, , agent], [, , collector]] = workloads(r);
      expect(agent.livenessProbe).toBeUndefined();
      expect(agent.readinessProbe).toBeUndefined();
      expect(collector.readinessProbe).toEqual({ tcpSocket: { port: 'grpc' }, periodSeconds: 5 });
      expect(collector.livenessProbe.tcpSocket).toEqual({ port: 'grpc' });
      const svc = find(r, 'Service', 'natlens-collector');
      expect(svc.metadata.annotations).toBeUndefined();
      expect(svc.spec.ports.map((p: Obj) => p.name)).toEqual(['grpc']);
    });

    it('keeps the user\'s pod annotations, which win over the scrape ones', () => {
      const r = renderChart({ values: { agent: { podAnnotations: { 'prometheus.io/scrape': 'false', team: 'net' } }, collector: { podAnnotations: { a: 'b' } } } });
      const [[, agent], [, collector]] = workloads(r);
      expect(agent.spec.template.metadata.annotations).toEqual({ 'prometheus.io/scrape': 'false', 'prometheus.io/port': '9469', 'prometheus.io/path': '/metrics', team: 'net' });
      expect(collector.spec.template.metadata.annotations).toMatchObject({ 'prometheus.io/scrape': 'true', a: 'b' });
      const off = renderChart({ set: ['agent.metrics.enabled=false'], values: { agent: { podAnnotations: { team: 'net' } } } });
      expect(find(off, 'DaemonSet').spec.template.metadata.annotations).toEqual({ team: 'net' });
    });

    it('sets the log level through NATLENS_LOG_LEVEL, a value natlens accepts', () => {
      const r = renderChart({ set: ['agent.logLevel=debug', 'collector.logLevel=warn'] });
      const [[, , agent], [, , collector]] = workloads(r);
      expect(env(agent).get('NATLENS_LOG_LEVEL')!.value).toBe('debug');
      expect(env(collector).get('NATLENS_LOG_LEVEL')!.value).toBe('warn');
      expect(env(container(find(defaults, 'DaemonSet'), 'agent')).get('NATLENS_LOG_LEVEL')!.value).toBe('info');
      expect(() => AGENT_SETTINGS.logLevel.parse('debug', 'NATLENS_LOG_LEVEL')).not.toThrow();
    });
  });

  describe('TLS', () => {
    const ROLES = ['agent', 'collector', 'query'] as const;
    const cert = (r: Rendered, role: string): Obj => find(r, 'Certificate', `natlens-${role}`);
    /** The Secret a workload's container reads its NATLENS_TLS_* files from, checking that every file lies in that mount. */
    const tlsSecretOf = (workload: Obj, name: string): string => {
      const c = container(workload, name);
      const vars = env(c);
      const files = ['NATLENS_TLS_CA', 'NATLENS_TLS_CERT', 'NATLENS_TLS_KEY'].map((v) => vars.get(v)!.value as string);
      expect(files.map((f) => basename(f))).toEqual(['ca.crt', 'tls.crt', 'tls.key']); // the keys cert-manager writes
      const mount = (c.volumeMounts as Obj[]).find((m) => files.every((f) => f.startsWith(`${m.mountPath}/`)))!;
      expect(mount.readOnly).toBe(true);
      expect(vars.has('NATLENS_PLAINTEXT')).toBe(false);
      return (podSpec(workload).volumes as Obj[]).find((v) => v.name === mount.name)!.secret.secretName;
    };

    it('by default: cert-manager issues agent, collector and query certificates from the chart\'s own CA, each with its role', () => {
      expect(find(defaults, 'Issuer', 'natlens-selfsigned').spec).toEqual({ selfSigned: {} });
      const ca = cert(defaults, 'ca');
      expect(ca.spec.isCA).toBe(true);
      expect(ca.spec.issuerRef).toEqual({ name: 'natlens-selfsigned', kind: 'Issuer', group: 'cert-manager.io' });
      expect(find(defaults, 'Issuer', 'natlens-ca').spec).toEqual({ ca: { secretName: ca.spec.secretName } });
      for (const role of ROLES) {
        const spec = cert(defaults, role).spec;
        expect(spec.uris).toHaveLength(1);
        expect(rolesOfSubjectAltName(`URI:${spec.uris[0]}`), role).toEqual([role]);
        expect(spec.issuerRef).toEqual({ name: 'natlens-ca', kind: 'Issuer', group: 'cert-manager.io' });
        expect(spec.privateKey).toEqual({ algorithm: 'ECDSA', size: 256, rotationPolicy: 'Always' });
        expect(spec.usages).toContain('client auth');
        expect(spec.usages.includes('server auth'), role).toBe(role === 'collector');
        expect(spec.duration).toBe('2160h');
      }
    });

    it('mounts each component\'s certificate where its NATLENS_TLS_* variables point', () => {
      expect(tlsSecretOf(find(defaults, 'DaemonSet'), 'agent')).toBe(cert(defaults, 'agent').spec.secretName);
      expect(tlsSecretOf(find(defaults, 'Deployment'), 'collector')).toBe(cert(defaults, 'collector').spec.secretName);
    });

    it('the collector certificate names every address agents and peers dial', () => {
      const collectorHost = (env(container(find(defaults, 'DaemonSet'), 'agent')).get('NATLENS_COLLECTOR')!.value as string).split(':')[0];
      expect(cert(defaults, 'collector').spec.dnsNames).toContain(collectorHost);
      const scaled = renderChart({ set: ['collector.replicas=3'] });
      const names: string[] = cert(scaled, 'collector').spec.dnsNames;
      const covered = (host: string): boolean => names.some((n) => n === host || (n.startsWith('*.') && host.slice(host.indexOf('.') + 1) === n.slice(2)));
      const peers = PeerRing.parsePeers(env(container(find(scaled, 'StatefulSet'), 'collector')).get('NATLENS_PEERS')!.value, 'NATLENS_PEERS');
      expect(peers).toHaveLength(3);
      for (const p of peers) expect(covered(p.address.split(':')[0]!), p.address).toBe(true);
      expect(covered('natlens-collector.natlens.svc')).toBe(true);
      expect(covered('evil.example')).toBe(false);
    });

    it('tls.enabled=false: NATLENS_PLAINTEXT on agent and collector, no certificates, no TLS volumes', () => {
      const r = renderChart({ set: ['tls.enabled=false'] });
      expect(r.objects.filter((o) => o.apiVersion.startsWith('cert-manager.io'))).toEqual([]);
      for (const [kind, name] of [['DaemonSet', 'agent'], ['Deployment', 'collector']] as const) {
        const w = find(r, kind);
        const vars = env(container(w, name));
        expect(vars.get('NATLENS_PLAINTEXT')!.value).toBe('true');
        expect(() => AGENT_SETTINGS.plaintext.parse(vars.get('NATLENS_PLAINTEXT')!.value, 'NATLENS_PLAINTEXT')).not.toThrow();
        expect([...vars.keys()].filter((k) => k.startsWith('NATLENS_TLS_'))).toEqual([]);
        expect((podSpec(w).volumes as Obj[]).some((v) => v.secret)).toBe(false);
      }
      expect(renderNotes({ set: ['tls.enabled=false'] })).toContain('security:   NONE');
    });

    it('takes existing Secrets without cert-manager, and refuses TLS with neither', () => {
      const r = renderChart({ set: ['tls.certManager.enabled=false', 'tls.existingSecrets.agent=agent-tls', 'tls.existingSecrets.collector=collector-tls'] });
      expect(r.objects.filter((o) => o.apiVersion.startsWith('cert-manager.io'))).toEqual([]);
      expect(tlsSecretOf(find(r, 'DaemonSet'), 'agent')).toBe('agent-tls');
      expect(tlsSecretOf(find(r, 'Deployment'), 'collector')).toBe('collector-tls');
      const refused = runRenderScript(['--set', 'tls.certManager.enabled=false', '--set', 'tls.existingSecrets.agent=agent-tls']);
      expect(refused.code).toBe(1);
      expect(refused.err).toContain('tls.existingSecrets.collector');
    });

    it('a user\'s issuer: no CA of the chart, every certificate signed by it', () => {
      const r = renderChart({ set: ['tls.certManager.issuerRef.name=corp-ca', 'tls.certManager.issuerRef.kind=ClusterIssuer'] });
      expect(r.objects.filter((o) => o.kind === 'Issuer')).toEqual([]);
      expect(r.objects.filter((o) => o.kind === 'Certificate').map((o) => o.metadata.name).sort()).toEqual(['natlens-agent', 'natlens-collector', 'natlens-query']);
      for (const role of ROLES) expect(cert(r, role).spec.issuerRef).toEqual({ name: 'corp-ca', kind: 'ClusterIssuer', group: 'cert-manager.io' });
    });

    it('query.tokenSecret: the collector reads the tokens where NATLENS_QUERY_TOKEN_FILE points', () => {
      expect(env(container(find(defaults, 'Deployment'), 'collector')).has('NATLENS_QUERY_TOKEN_FILE')).toBe(false);
      const r = renderChart({ set: ['query.tokenSecret=natlens-tokens', 'query.tokenSecretKey=list'] });
      const dep = find(r, 'Deployment');
      const c = container(dep, 'collector');
      const file = env(c).get('NATLENS_QUERY_TOKEN_FILE')!.value as string;
      expect(() => COLLECTOR_SETTINGS.queryTokenFile.parse(file, 'NATLENS_QUERY_TOKEN_FILE')).not.toThrow();
      const mount = (c.volumeMounts as Obj[]).find((m) => file.startsWith(`${m.mountPath}/`))!;
      expect(mount.readOnly).toBe(true);
      const volume = (podSpec(dep).volumes as Obj[]).find((v) => v.name === mount.name)!;
      expect(volume.secret.secretName).toBe('natlens-tokens');
      expect(volume.secret.items).toEqual([{ key: 'list', path: file.slice(mount.mountPath.length + 1) }]);
    });

    it('the cert-manager check catches a misspelt usage and an unknown field', () => {
      const c = structuredClone(cert(defaults, 'agent'));
      c.spec.usages = ['client-auth'];
      expect(() => validateCertManager('Certificate', c)).toThrow(/usages\/0 must be equal to one of the allowed values/);
      const d = structuredClone(cert(defaults, 'agent'));
      d.spec.uri = d.spec.uris;
      expect(() => validateCertManager('Certificate', d)).toThrow(/additional properties 'uri'/);
    });
  });

  describe('RBAC', () => {
    it('grants each component only get/list/watch on pods, nodes, services and endpointslices', () => {
      for (const component of ['natlens-agent', 'natlens-collector']) {
        const role = find(defaults, 'ClusterRole', component);
        const granted = new Set<string>();
        for (const rule of role.rules as Obj[]) {
          expect([...rule.verbs].sort(), `${component} verbs`).toEqual(['get', 'list', 'watch']);
          expect(rule.resourceNames).toBeUndefined();
          expect(rule.nonResourceURLs).toBeUndefined();
          for (const group of rule.apiGroups) for (const res of rule.resources) granted.add(`${group}/${res}`);
        }
        expect([...granted].sort()).toEqual(['/nodes', '/pods', '/services', 'discovery.k8s.io/endpointslices']);
        const binding = find(defaults, 'ClusterRoleBinding', component);
        expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: component });
        expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: component, namespace: 'natlens' }]);
      }
      expect(defaults.objects.filter((o) => o.kind === 'Role' || o.kind === 'RoleBinding')).toEqual([]);
      expect(podSpec(find(defaults, 'Deployment')).serviceAccountName).toBe('natlens-collector');
    });
  });

  describe('collector', () => {
    it('serves gRPC on 7070 behind the natlens-collector Service', () => {
      const svc = find(defaults, 'Service', 'natlens-collector');
      expect(svc.spec.ports).toEqual([{ name: 'grpc', port: 7070, targetPort: 'grpc', protocol: 'TCP' }, { name: 'metrics', port: 9470, targetPort: 'metrics', protocol: 'TCP' }]);
      const dep = find(defaults, 'Deployment', 'natlens-collector');
      expect(dep.spec.replicas).toBe(1);
      for (const [k, v] of Object.entries(svc.spec.selector as Record<string, string>)) expect(dep.spec.template.metadata.labels[k]).toBe(v);
      const c = container(dep, 'collector');
      expect(c.ports).toEqual([{ name: 'grpc', containerPort: 7070, protocol: 'TCP' }, { name: 'metrics', containerPort: 9470, protocol: 'TCP' }]);
      expect(c.args).toEqual(['collector']);
      const vars = env(c);
      expect(vars.get('NATLENS_LISTEN')!.value).toBe('0.0.0.0:7070');
      expect(vars.get('NATLENS_KUBERNETES')!.value).toBe('true');
      const settings = new Map(Object.values(COLLECTOR_SETTINGS).map((s) => [s.env as string, s]));
      for (const [name, e] of vars) {
        if (!settings.has(name) && name === 'NATLENS_KUBERNETES') continue;
        expect(settings.get(name), `${name} is not a collector setting`).toBeDefined();
        if (e.value !== undefined) expect(() => settings.get(name)!.parse(e.value, name)).not.toThrow();
      }
    });

    it('keeps the embedded store in a volume at NATLENS_DATA (emptyDir, or a PVC when asked)', () => {
      const dep = find(defaults, 'Deployment');
      const dataDir = env(container(dep, 'collector')).get('NATLENS_DATA')!.value;
      const mount = (container(dep, 'collector').volumeMounts as Obj[]).find((m) => m.mountPath === dataDir)!;
      expect((podSpec(dep).volumes as Obj[]).find((v) => v.name === mount.name)!.emptyDir).toEqual({});
      expect(dep.spec.strategy).toEqual({ type: 'Recreate' });
      expect(env(container(dep, 'collector')).has('NATLENS_CLICKHOUSE_URL')).toBe(false);

      const persisted = renderChart({ set: ['collector.persistence.enabled=true'] });
      const pvc = find(persisted, 'PersistentVolumeClaim');
      expect(pvc.spec.resources.requests.storage).toBe('10Gi');
      expect((podSpec(find(persisted, 'Deployment')).volumes as Obj[]).find((v) => v.name === 'data')!.persistentVolumeClaim).toEqual({ claimName: pvc.metadata.name });
    });

    it('runs as peers in a StatefulSet when replicas > 1, each listed in NATLENS_PEERS', () => {
      for (const replicas of [2, 3]) {
        const r = renderChart({ set: [`collector.replicas=${replicas}`, 'collector.persistence.enabled=true'] });
        expect(r.objects.some((o) => o.kind === 'Deployment')).toBe(false);
        expect(r.objects.some((o) => o.kind === 'PersistentVolumeClaim')).toBe(false);
        const sts = find(r, 'StatefulSet', 'natlens-collector');
        expect(sts.spec.replicas).toBe(replicas);
        const headless = find(r, 'Service', sts.spec.serviceName);
        expect(headless.spec.clusterIP).toBe('None');
        expect(headless.spec.publishNotReadyAddresses).toBe(true);
        expect(sts.spec.volumeClaimTemplates.map((t: Obj) => t.metadata.name)).toEqual(['data']);
        const vars = env(container(sts, 'collector'));
        expect(vars.get('NATLENS_COLLECTOR_ID')!.valueFrom).toEqual({ fieldRef: { fieldPath: 'metadata.name' } });
        const peers = PeerRing.parsePeers(vars.get('NATLENS_PEERS')!.value, 'NATLENS_PEERS');
        expect(peers.map((p) => p.id)).toEqual([...Array(replicas).keys()].map((i) => `natlens-collector-${i}`));
        expect(peers[1]!.address).toBe(`natlens-collector-1.${headless.metadata.name}.natlens.svc:7070`);
        // each pod's id is in the ring (PeerRing throws otherwise)
        expect(() => new PeerRing(`natlens-collector-${replicas - 1}`, peers)).not.toThrow();
      }
    });
  });

  describe('ClickHouse modes', () => {
    const urlRef = (r: Rendered): Obj => env(container(find(r, r.objects.some((o) => o.kind === 'Deployment') ? 'Deployment' : 'StatefulSet', 'natlens-collector'), 'collector')).get('NATLENS_CLICKHOUSE_URL')!.valueFrom.secretKeyRef;

    it('embedded (default): no ClickHouse server, no Secret', () => {
      expect(defaults.objects.some((o) => o.kind === 'StatefulSet' || o.kind === 'Secret')).toBe(false);
    });

    it('statefulset: a single-replica ClickHouse server whose URL reaches the collector through a Secret', () => {
      const r = renderChart({ set: ['clickhouse.mode=statefulset'] });
      const sts = find(r, 'StatefulSet', 'natlens-clickhouse');
      expect(sts.spec.replicas).toBe(1);
      expect(container(sts, 'clickhouse').image).toBe('clickhouse/clickhouse-server:24.8');
      expect(sts.spec.volumeClaimTemplates[0].spec.resources.requests.storage).toBe('20Gi');
      const svc = find(r, 'Service', 'natlens-clickhouse');
      expect(svc.spec.ports.find((p: Obj) => p.name === 'http').port).toBe(8123);
      const secret = find(r, 'Secret', 'natlens-clickhouse');
      const password = b64(secret.data.password);
      expect(password).toMatch(/^[A-Za-z0-9]{32}$/);
      expect(b64(secret.data.url)).toBe(`http://natlens:${password}@natlens-clickhouse.natlens.svc:8123`);
      expect(urlRef(r)).toEqual({ name: 'natlens-clickhouse', key: 'url' });
      expect(env(container(find(r, 'Deployment'), 'collector')).has('NATLENS_DATA')).toBe(false);
      expect(find(r, 'Deployment').spec.strategy).toBeUndefined();
    });

    it('external: the given URL in a Secret, or an existing Secret; no server', () => {
      const r = renderChart({ set: ['clickhouse.mode=external', 'clickhouse.external.url=https://u:p@ch.example:8443'] });
      expect(r.objects.some((o) => o.kind === 'StatefulSet')).toBe(false);
      expect(b64(find(r, 'Secret', 'natlens-clickhouse').data.url)).toBe('https://u:p@ch.example:8443');
      expect(urlRef(r)).toEqual({ name: 'natlens-clickhouse', key: 'url' });

      const existing = renderChart({ set: ['clickhouse.mode=external', 'clickhouse.external.existingSecret=my-ch', 'clickhouse.external.existingSecretKey=dsn'] });
      expect(existing.objects.some((o) => o.kind === 'Secret' || o.kind === 'StatefulSet')).toBe(false);
      expect(urlRef(existing)).toEqual({ name: 'my-ch', key: 'dsn' });
    });

    it('external without a URL is refused, naming what is missing', () => {
      const r = runRenderScript(['--set', 'clickhouse.mode=external']);
      expect(r.code).toBe(1);
      expect(r.err).toContain('clickhouse.external.url');
    });
  });

  describe('values.schema.json', () => {
    const schema = JSON.parse(readFileSync(join(CHART_DIR, 'values.schema.json'), 'utf8')) as Obj;
    const ajv = new Ajv({ allErrors: true, strict: false });
    const validate = ajv.compile(schema);
    const chartDefaults = YAML.parse(readFileSync(join(CHART_DIR, 'values.yaml'), 'utf8')) as Obj;
    const errorsOf = (values: unknown): string => {
      if (validate(values)) return '';
      return (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message} ${JSON.stringify(e.params)}`).join('\n');
    };
    const patched = (path: string, value: unknown): Obj => {
      const v = structuredClone(chartDefaults);
      const keys = path.split('.');
      let at = v;
      for (const k of keys.slice(0, -1)) at = at[k];
      at[keys.at(-1)!] = value;
      return v;
    };

    it('is draft-07, closed at the top level and in every section', () => {
      expect(schema.$schema).toBe('http://json-schema.org/draft-07/schema#');
      expect(schema.additionalProperties).toBe(false);
      const closed = (node: Obj, path: string): void => {
        if (node.type !== 'object' || !node.properties) return;
        expect(node.additionalProperties, path).toBe(false);
        for (const [k, child] of Object.entries(node.properties as Record<string, Obj>)) closed(child, `${path}.${k}`);
      };
      closed(schema, 'values');
    });

    it('accepts the defaults and every value set the tests render', () => {
      expect(errorsOf(chartDefaults)).toBe('');
      for (const [, opts] of ALL_RENDERS) expect(errorsOf(mergedValues(opts))).toBe('');
    });

    it.each([
      ['collector.replicas', -1, '/collector/replicas'],
      ['collector.replicas', 1.5, '/collector/replicas'],
      ['clickhouse.mode', 'foo', '/clickhouse/mode'],
      ['agent.privileged', 'yes', '/agent/privileged'],
      ['agent.capture.mode', 'xdp', '/agent/capture/mode'],
      ['agent.capture.ringKb', 1, '/agent/capture/ringKb'],
      ['agent.image.pullPolicy', 'Sometimes', '/agent/image/pullPolicy'],
      ['collector.service.port', 70000, '/collector/service/port'],
      ['collector.database', 'drop table', '/collector/database'],
      ['clickhouse.statefulset.password', 'p@ss/word', '/clickhouse/statefulset/password'],
      ['agent.metrics.port', 0, '/agent/metrics/port'],
      ['collector.metrics.port', 70000, '/collector/metrics/port'],
      ['agent.metrics.enabled', 'yes', '/agent/metrics/enabled'],
      ['collector.logLevel', 'loud', '/collector/logLevel'],
      ['tls.enabled', 'no', '/tls/enabled'],
      ['tls.certManager.duration', '90 days', '/tls/certManager/duration'],
      ['tls.certManager.issuerRef', { name: 'x', kind: 'Secret' }, '/tls/certManager/issuerRef/kind'],
      ['agent.extraCapabilities', ['NET_RAW'], '/agent/extraCapabilities/0'],
      ['query.tokenSecretKey', '', '/query/tokenSecretKey'],
    ])('rejects %s = %j, naming the field', (path, value, where) => {
      expect(errorsOf(patched(path, value))).toContain(where);
    });

    it('rejects an unknown key at the top level and in a section, naming it', () => {
      expect(errorsOf({ ...chartDefaults, bogus: 1 })).toContain('"additionalProperty":"bogus"');
      expect(errorsOf(patched('agent.capabilities', ['SYS_ADMIN']))).toContain('"additionalProperty":"capabilities"');
    });

    it('is checked before rendering, as helm does', () => {
      const r = runRenderScript(['--set', 'collector.replicas=-1', '--set', 'bogus=1']);
      expect(r.code).toBe(1);
      expect(r.err).toContain('collector.replicas: must be >= 1');
      expect(r.err).toContain("must NOT have additional properties 'bogus'");
    });
  });

  it('tells the operator what was installed and how to ask it (NOTES.txt)', () => {
    const notes = renderNotes();
    expect(notes).toContain('kubectl -n natlens port-forward svc/natlens-collector 7070:7070');
    expect(notes).toContain('kubectl natlens who');
    expect(renderNotes({ set: ['clickhouse.mode=statefulset', 'collector.replicas=2'] })).toContain('StatefulSet natlens-collector (2 peers)');
  });

  it('has appVersion = the natlens version, the default image tag', () => {
    const chart = YAML.parse(readFileSync(join(CHART_DIR, 'Chart.yaml'), 'utf8')) as Obj;
    const pkg = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as Obj;
    expect(chart.appVersion).toBe(pkg.version);
    expect(container(find(defaults, 'DaemonSet'), 'agent').image).toBe(`ghcr.io/natlens/natlens-agent:${pkg.version}`);
    expect(container(find(defaults, 'Deployment'), 'collector').image).toBe(`ghcr.io/natlens/natlens-collector:${pkg.version}`);
  });
});

describe('plain manifests deploy/manifests/natlens.yaml', () => {
  it('are the chart rendered with default values (regenerate: node scripts/render-chart.mjs --manifests)', () => {
    const r = runRenderScript(['--manifests', '--check']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
  });

  it('apply in one command: the Namespace first, everything else valid and inside it', () => {
    const text = readFileSync(join(PACKAGE_ROOT, 'deploy', 'manifests', 'natlens.yaml'), 'utf8');
    const r = parseStream(text);
    expect(r.objects[0]).toMatchObject({ kind: 'Namespace', metadata: { name: 'natlens' } });
    validateAll(r);
    expect(kinds(r)).toEqual([...kinds(renderChart()), 'Namespace/natlens'].sort());
  });
});

describe('container images', () => {
  const agentFile = readFileSync(join(PACKAGE_ROOT, 'deploy', 'images', 'agent.Dockerfile'), 'utf8');
  const collectorFile = readFileSync(join(PACKAGE_ROOT, 'deploy', 'images', 'collector.Dockerfile'), 'utf8');
  /** Instructions without comments, continuation lines joined. */
  const instructions = (text: string): string[] =>
    text.split('\n').filter((l) => !l.trimStart().startsWith('#')).join('\n').replace(/\\\n/g, ' ').split('\n').map((l) => l.trim()).filter(Boolean);
  const stages = (text: string): string[][] => {
    const out: string[][] = [];
    for (const i of instructions(text)) {
      if (/^FROM\s/i.test(i)) out.push([]);
      out.at(-1)!.push(i);
    }
    return out;
  };

  it('agent: prunes dev dependencies and removes chdb before its runtime stage copies node_modules', () => {
    const [build, runtime] = stages(agentFile);
    const prune = build!.findIndex((i) => /npm prune --omit=dev/.test(i) && /rm -rf node_modules\/chdb node_modules\/@chdb/.test(i));
    expect(prune, 'the build stage must run npm prune --omit=dev and rm -rf node_modules/chdb node_modules/@chdb').toBeGreaterThan(build!.findIndex((i) => /scripts\/build\.sh/.test(i)));
    expect(prune).toBe(build!.length - 1); // nothing reinstalls it afterwards
    expect(runtime!.some((i) => /^COPY --from=build \/src\/node_modules /.test(i))).toBe(true);
    expect(runtime!.filter((i) => /chdb/.test(i))).toEqual([]);
    expect(runtime!.some((i) => /^RUN node bin\/natlens agent --help/.test(i))).toBe(true);
  });

  it('agent: carries the BPF object and natlens-probe where natlens looks for them', () => {
    const [build, runtime] = stages(agentFile);
    expect(build!.some((i) => /^RUN .*bash scripts\/build\.sh/.test(i))).toBe(true);
    for (const wanted of [PROBE_BIN, BPF_OBJECT]) {
      const rel = wanted.slice(PACKAGE_ROOT.length + 1); // dist/native/...
      expect(runtime!.some((i) => i.startsWith('COPY --from=build') && i.includes(`/src/${rel}`) && i.endsWith('./dist/native/')), rel).toBe(true);
    }
    expect(runtime!.some((i) => /apt-get install .*libbpf1/.test(i))).toBe(true);
    expect(runtime).toContain('ENTRYPOINT ["node", "/opt/natlens/bin/natlens"]');
    expect(runtime).toContain('CMD ["agent"]');
  });

  it('collector: keeps chdb (the embedded store) and runs as a non-root user', () => {
    const runtime = stages(collectorFile).at(-1)!;
    const removesChdb = (i: string): boolean => /rm -[a-z]*\s[^;&|]*chdb/.test(i);
    expect(instructions(agentFile).filter(removesChdb)).toHaveLength(1);
    expect(instructions(collectorFile).filter(removesChdb)).toEqual([]);
    expect(instructions(collectorFile).some((i) => /npm prune --omit=dev/.test(i))).toBe(true);
    expect(runtime).toContain('ENTRYPOINT ["node", "/opt/natlens/bin/natlens"]');
    expect(runtime.some((i) => /^CMD \["collector"/.test(i))).toBe(true);
    expect(runtime).toContain('USER 65532:65532');
  });

  it('only the collector store imports chdb, lazily', () => {
    const hits: string[] = [];
    const walk = (dir: string): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.name.endsWith('.ts') && /(from\s+|import\s*\(\s*|require\(\s*)['"](chdb|@chdb\/)/.test(readFileSync(p, 'utf8'))) hits.push(p.slice(PACKAGE_ROOT.length + 1));
      }
    };
    walk(join(PACKAGE_ROOT, 'src'));
    expect(hits).toEqual(['src/collector/store/clickhouse-store.ts']);
    const store = readFileSync(join(PACKAGE_ROOT, 'src', 'collector', 'store', 'clickhouse-store.ts'), 'utf8');
    expect(store).not.toMatch(/^import .*['"]chdb/m);
  });

  it('the agent starts without chdb, as in its image; the collector explains that its embedded mode needs it', () => {
    const dist = join(PACKAGE_ROOT, 'dist', 'src', 'cli', 'main.js');
    expect(readdirSync(join(PACKAGE_ROOT, 'dist', 'src', 'cli')), `build first (npm run build:ts): ${dist}`).toContain('main.js');
    const dir = mkdtempSync(join(tmpdir(), 'natlens-agent-image-'));
    try {
      cpSync(join(PACKAGE_ROOT, 'package.json'), join(dir, 'package.json'));
      cpSync(join(PACKAGE_ROOT, 'bin', 'natlens'), join(dir, 'bin', 'natlens'));
      cpSync(join(PACKAGE_ROOT, 'dist', 'src'), join(dir, 'dist', 'src'), { recursive: true });
      mkdirSync(join(dir, 'node_modules'));
      for (const entry of readdirSync(join(PACKAGE_ROOT, 'node_modules'))) {
        if (entry === 'chdb' || entry === '@chdb' || entry.startsWith('.')) continue;
        symlinkSync(join(PACKAGE_ROOT, 'node_modules', entry), join(dir, 'node_modules', entry));
      }
      const natlens = (...args: string[]) => spawnSync(process.execPath, [join(dir, 'bin', 'natlens'), ...args], { encoding: 'utf8', timeout: 30_000 });
      const agent = natlens('agent', '--help');
      expect(agent.stderr).toBe('');
      expect(agent.status).toBe(0);
      const collector = natlens('collector', '--data', join(dir, 'data'), '--listen', '127.0.0.1:0', '--plaintext');
      expect(collector.stderr).toContain('needs the chdb package');
      expect(collector.status).not.toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('.dockerignore keeps node_modules and dist out of the build context', () => {
    const ignored = readFileSync(join(PACKAGE_ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim());
    for (const p of ['node_modules', 'dist', 'build', '.git']) expect(ignored).toContain(p);
    for (const needed of ['src', 'bin', 'native', 'bpf', 'scripts', 'bench', 'package.json']) expect(ignored).not.toContain(needed);
  });
});

describe('kubectl plugin bin/kubectl-natlens', () => {
  const plugin = join(PACKAGE_ROOT, 'bin', 'kubectl-natlens');
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const clean = { ...process.env };
    delete clean.NATLENS_COLLECTOR;
    const r = spawnSync(plugin, args, { encoding: 'utf8', timeout: 20_000, env: { ...clean, ...env } });
    return { code: r.status, out: r.stdout, err: r.stderr };
  };

  it('is an executable named the way kubectl discovers plugins', () => {
    expect(basename(plugin)).toMatch(/^kubectl-[a-z]+$/);
    expect(readFileSync(plugin, 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
    const r = spawnSync('test', ['-x', plugin]);
    expect(r.status).toBe(0);
  });

  it('shows natlens help, plus how to reach the in-cluster collector', () => {
    const r = run(['--help']);
    expect(r.code).toBe(0);
    expect(r.out).toContain('who really called this pod');
    expect(r.out).toContain('kubectl -n natlens port-forward svc/natlens-collector 7070:7070');
  });

  it('rejects a bad flag with exit 2', () => {
    const r = run(['--bogus']);
    expect(r.code).toBe(2);
    expect(r.err).toContain("unknown option '--bogus'");
  });

  it('hints at port-forward when a query has no collector, and uses NATLENS_COLLECTOR when set', () => {
    // --since is checked before any connection is made: exit 2 without a network.
    const hinted = run(['who', '10.0.0.1', '--since', 'never']);
    expect(hinted.code).toBe(2);
    expect(hinted.err).toContain('port-forward svc/natlens-collector 7070:7070');
    expect(hinted.err).toContain("--since: 'never' is not a duration");
    const fromEnv = run(['who', '10.0.0.1', '--since', 'never'], { NATLENS_COLLECTOR: '10.1.2.3:7070' });
    expect(fromEnv.code).toBe(2);
    expect(fromEnv.err).not.toContain('port-forward');
    const given = run(['who', '10.0.0.1', '--collector', '10.1.2.3:7070', '--since', 'never']);
    expect(given.err).not.toContain('port-forward');
  });
});
