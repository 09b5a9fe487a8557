// `natlens lab api-server`: the running lab served as a Kubernetes API (list/watch), with a
// kubeconfig for natlens collector/agent --kubeconfig (or kubectl).

import { Command, Option } from 'commander';
import { DEFAULT_API_LISTEN, labKubeconfigPath, startLabApiServer } from './lab-api-server.js';
import { DEFAULT_PREFIX } from './topology.js';

const status = (event: string, fields: Record<string, unknown> = {}): void => {
  process.stderr.write(`${JSON.stringify({ event, ...fields })}\n`);
};

export function registerLabApiServerCommand(lab: Command): void {
  lab
    .command('api-server')
    .description('serve the lab\'s nodes, pods, services and endpointslices as a Kubernetes API (list/watch), following every change of the lab')
    .option('--listen <host:port>', 'serve the API here', DEFAULT_API_LISTEN)
    .option('--kubeconfig-out <path>', `write a kubeconfig for it here (default ${labKubeconfigPath('<prefix>')})`)
    .addOption(new Option('--prefix <prefix>', 'name prefix of the lab to serve').default(DEFAULT_PREFIX))
    .addHelpText(
      'after',
      `
Status lines go to stderr as JSON; the first is {"event":"listening","url":...,"kubeconfig":...}.
Runs until SIGINT/SIGTERM. Examples:
  natlens lab api-server &
  natlens collector --data /tmp/natlens --kubeconfig /run/natlens/lab-nl.kubeconfig
  kubectl --kubeconfig /run/natlens/lab-nl.kubeconfig get pods,svc,endpointslices -o wide`,
    )
    .action(async (opts: { listen: string; kubeconfigOut?: string; prefix: string }) => {
      const server = await startLabApiServer({
        prefix: opts.prefix,
        listen: opts.listen,
        ...(opts.kubeconfigOut ? { kubeconfigOut: opts.kubeconfigOut } : {}),
        log: (fields) => {
          const { event, ...rest } = fields;
          status(String(event), rest);
        },
      });
      status('listening', { url: server.url, kubeconfig: server.kubeconfigPath, prefix: opts.prefix, resourceVersion: server.store.resourceVersion });
      const signal = await new Promise<string>((resolve) => {
        process.once('SIGINT', () => resolve('SIGINT'));
        process.once('SIGTERM', () => resolve('SIGTERM'));
      });
      await server.close();
      status('stopped', { signal });
    });
}
