// Which Kubernetes API server to talk to, the way kubectl and client-go find it: an explicit
// kubeconfig, then $KUBECONFIG, then the pod's service account (in-cluster), then ~/.kube/config.

import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { describeError } from '../util/errors.js';
import { K8sError } from './errors.js';

const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export interface LoadKubeConfigOptions {
  /** A kubeconfig file (--kubeconfig). */
  kubeconfig?: string;
  /** A context of that kubeconfig instead of its current-context (--context). */
  context?: string;
  /** Use the pod's service account (and KUBERNETES_SERVICE_HOST/PORT) only. */
  inCluster?: boolean;
  /** For tests: the environment and home directory to look in (default process.env, os.homedir()). */
  env?: NodeJS.ProcessEnv;
  home?: string;
  /** For tests: prefix of the service account directory (like client-node's loadFromCluster(pathPrefix)). */
  rootPrefix?: string;
}

/**
 * A KubeConfig with a usable current cluster. Order: opts.kubeconfig > $KUBECONFIG (every file of
 * the list merged, like kubectl) > in-cluster (KUBERNETES_SERVICE_HOST set) > ~/.kube/config.
 * Throws K8sError naming everything it tried.
 */
export function loadKubeConfig(opts: LoadKubeConfigOptions = {}): KubeConfig {
  const env = opts.env ?? process.env;
  const root = opts.rootPrefix ?? '';
  const tried: string[] = [];
  let kc: KubeConfig | undefined;
  let source = '';

  if (opts.kubeconfig) {
    kc = fromFiles([opts.kubeconfig], '--kubeconfig');
    source = opts.kubeconfig;
  } else if (opts.inCluster) {
    kc = inCluster(env, root);
    source = 'in-cluster service account';
  } else {
    const listed = (env.KUBECONFIG ?? '').split(delimiter).filter(Boolean);
    if (listed.length > 0) {
      const files = listed.filter((f) => existsSync(f));
      // kubectl skips missing entries of $KUBECONFIG, but a list with none left is a mistake.
      if (files.length === 0) throw new K8sError(`$KUBECONFIG names no existing file (${listed.join(delimiter)})`);
      kc = fromFiles(files, '$KUBECONFIG');
      source = `$KUBECONFIG (${files.join(delimiter)})`;
    } else {
      tried.push('$KUBECONFIG (unset)');
      if (env.KUBERNETES_SERVICE_HOST) {
        kc = inCluster(env, root);
        source = 'in-cluster service account';
      } else {
        tried.push('in-cluster (KUBERNETES_SERVICE_HOST unset)');
        const home = join(opts.home ?? homedir(), '.kube', 'config');
        if (existsSync(home)) {
          kc = fromFiles([home], '~/.kube/config');
          source = home;
        } else tried.push(`${home} (missing)`);
      }
    }
  }
  if (!kc) throw new K8sError(`no Kubernetes configuration found: tried ${tried.join(', ')}; pass --kubeconfig PATH`);

  if (opts.context) {
    if (!kc.getContextObject(opts.context)) {
      const known = kc.getContexts().map((c) => c.name);
      throw new K8sError(`context "${opts.context}" is not in ${source} (contexts: ${known.join(', ') || 'none'})`);
    }
    kc.setCurrentContext(opts.context);
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) {
    throw new K8sError(`${source}: current context "${kc.getCurrentContext() || '(none)'}" names no cluster; pass --context`);
  }
  if (!cluster.server) throw new K8sError(`${source}: cluster "${cluster.name}" has no server URL`);
  return kc;
}

function fromFiles(files: string[], what: string): KubeConfig {
  const kc = new KubeConfig();
  for (const [i, file] of files.entries()) {
    try {
      if (i === 0) kc.loadFromFile(file);
      else {
        const more = new KubeConfig();
        more.loadFromFile(file);
        // Like kubectl: the first file's current-context wins, and the first definition of a name.
        kc.mergeConfig(dropKnown(kc, more), true);
      }
    } catch (err) {
      throw new K8sError(`cannot read kubeconfig ${file} (${what}): ${describeError(err)}`, { cause: err });
    }
  }
  return kc;
}

/** `more` without the clusters/users/contexts `kc` already defines (mergeConfig throws on duplicates). */
function dropKnown(kc: KubeConfig, more: KubeConfig): KubeConfig {
  const out = new KubeConfig();
  const has = <T extends { name: string }>(list: T[], name: string): boolean => list.some((x) => x.name === name);
  out.loadFromOptions({
    clusters: more.getClusters().filter((c) => !has(kc.getClusters(), c.name)),
    users: more.getUsers().filter((u) => !has(kc.getUsers(), u.name)),
    contexts: more.getContexts().filter((c) => !has(kc.getContexts(), c.name)),
    currentContext: more.getCurrentContext(),
  });
  return out;
}

function inCluster(env: NodeJS.ProcessEnv, root: string): KubeConfig {
  const token = `${root}${SERVICE_ACCOUNT_DIR}/token`;
  if (!env.KUBERNETES_SERVICE_HOST || !env.KUBERNETES_SERVICE_PORT) {
    throw new K8sError('in-cluster configuration needs KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT (set by the kubelet in every pod)');
  }
  if (!existsSync(token)) {
    throw new K8sError(`in-cluster configuration: no service account token at ${token} (is automountServiceAccountToken off?)`);
  }
  const kc = new KubeConfig();
  const saved = { host: process.env.KUBERNETES_SERVICE_HOST, port: process.env.KUBERNETES_SERVICE_PORT };
  // loadFromCluster reads process.env; point it at the environment we were given.
  process.env.KUBERNETES_SERVICE_HOST = env.KUBERNETES_SERVICE_HOST;
  process.env.KUBERNETES_SERVICE_PORT = env.KUBERNETES_SERVICE_PORT;
  try {
    kc.loadFromCluster(root);
  } finally {
    restore('KUBERNETES_SERVICE_HOST', saved.host);
    restore('KUBERNETES_SERVICE_PORT', saved.port);
  }
  return kc;
}

function restore(name: string, value: string | undefined): void {
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
}
