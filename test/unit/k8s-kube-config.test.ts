import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { K8sError } from '../../src/k8s/errors.js';
import { loadKubeConfig } from '../../src/k8s/kube-config.js';
import { labKubeconfig } from '../../src/lab/lab-api-server.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'natlens-kc-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function kubeconfig(name: string, server: string, contexts: string[] = [name]): string {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(file, `apiVersion: v1
kind: Config
clusters:
- name: ${name}
  cluster:
    server: ${server}
users:
- name: ${name}
  user:
    token: t-${name}
contexts:
${contexts.map((c) => `- name: ${c}\n  context:\n    cluster: ${name}\n    user: ${name}`).join('\n')}
current-context: ${contexts[0]}
`);
  return file;
}

const noEnv = (): { env: NodeJS.ProcessEnv; home: string } => ({ env: {}, home: join(dir, 'home') });

describe('loadKubeConfig', () => {
  it('uses --kubeconfig first, and --context within it', () => {
    const file = kubeconfig('prod', 'https://10.0.0.1:6443', ['prod', 'prod-admin']);
    const other = kubeconfig('env', 'https://env:6443');
    const kc = loadKubeConfig({ kubeconfig: file, env: { KUBECONFIG: other } });
    expect(kc.getCurrentCluster()?.server).toBe('https://10.0.0.1:6443');
    expect(loadKubeConfig({ kubeconfig: file, context: 'prod-admin' }).getCurrentContext()).toBe('prod-admin');
    expect(() => loadKubeConfig({ kubeconfig: file, context: 'staging' })).toThrow(/context "staging" is not in .*prod\.yaml \(contexts: prod, prod-admin\)/);
  });

  it('merges every file of $KUBECONFIG, the first current-context winning', () => {
    const a = kubeconfig('a', 'https://a:6443');
    const b = kubeconfig('b', 'https://b:6443');
    const kc = loadKubeConfig({ env: { KUBECONFIG: [join(dir, 'missing.yaml'), a, b].join(delimiter) }, home: dir });
    expect(kc.getCurrentCluster()?.server).toBe('https://a:6443');
    expect(kc.getContexts().map((c) => c.name)).toEqual(['a', 'b']);
    expect(loadKubeConfig({ env: { KUBECONFIG: `${a}${delimiter}${b}` }, context: 'b' }).getCurrentCluster()?.server).toBe('https://b:6443');
    expect(() => loadKubeConfig({ env: { KUBECONFIG: join(dir, 'nope.yaml') } })).toThrow(K8sError);
  });

  it('uses the service account in a pod, before ~/.kube/config', () => {
    const sa = join(dir, 'var/run/secrets/kubernetes.io/serviceaccount');
    mkdirSync(sa, { recursive: true });
    writeFileSync(join(sa, 'token'), 'sa-token');
    writeFileSync(join(sa, 'namespace'), 'natlens');
    mkdirSync(join(dir, 'home/.kube'), { recursive: true });
    writeFileSync(join(dir, 'home/.kube/config'), '{}');
    const kc = loadKubeConfig({ env: { KUBERNETES_SERVICE_HOST: 'fd00:10:96::1', KUBERNETES_SERVICE_PORT: '443' }, home: join(dir, 'home'), rootPrefix: dir });
    expect(kc.getCurrentCluster()?.server).toBe('https://[fd00:10:96::1]:443');
    expect(kc.getContextObject(kc.getCurrentContext())?.namespace).toBe('natlens');
    expect(() => loadKubeConfig({ env: { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' }, rootPrefix: join(dir, 'elsewhere') }))
      .toThrow(/no service account token at .*elsewhere\/var\/run\/secrets\/kubernetes.io\/serviceaccount\/token/);
  });

  it('falls back to ~/.kube/config', () => {
    const { env, home } = noEnv();
    mkdirSync(join(home, '.kube'), { recursive: true });
    writeFileSync(join(home, '.kube/config'), labKubeconfig('http://127.0.0.1:6443'));
    const kc = loadKubeConfig({ env, home });
    expect(kc.getCurrentCluster()).toMatchObject({ server: 'http://127.0.0.1:6443', skipTLSVerify: true });
  });

  it('says everything it tried when nothing is configured', () => {
    const { env, home } = noEnv();
    const err = (() => {
      try {
        loadKubeConfig({ env, home });
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(K8sError);
    expect((err as Error).message).toBe(`no Kubernetes configuration found: tried $KUBECONFIG (unset), in-cluster (KUBERNETES_SERVICE_HOST unset), ${home}/.kube/config (missing); pass --kubeconfig PATH`);
  });

  it('names the file that cannot be read, and a context without a cluster', () => {
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'clusters: [unclosed');
    expect(() => loadKubeConfig({ kubeconfig: bad })).toThrow(/cannot read kubeconfig .*bad\.yaml \(--kubeconfig\)/);
    const empty = join(dir, 'empty.yaml');
    writeFileSync(empty, 'apiVersion: v1\nkind: Config\n');
    expect(() => loadKubeConfig({ kubeconfig: empty })).toThrow(/current context "\(none\)" names no cluster/);
  });
});
