import { Command } from 'commander';
import { QUERY_SETTINGS, resolveConfig } from '../config.js';
import { etpJson, formatEtp } from '../query/etp-format.js';
import { parseNamespacedName } from '../query/target.js';
import { QueryClient } from '../transport/query-client.js';
import { addSecurityOptions, queryAccess, securityFlags } from './security-options.js';
import type { EtpResponse } from '../transport/proto.generated.js';
import { NatlensError, UsageError, quoteInput } from '../util/errors.js';

export function registerEtpCommand(program: Command): void {
  const cmd = program
    .command('etp')
    .summary('what an externalTrafficPolicy change did to a Service, period by period')
    .argument('<service>', 'NAMESPACE/SERVICE, e.g. default/loadbalancer')
    .option('--since <duration>', 'look back this far (default 1h)')
    .option('--collector <host:port>', 'the collector to ask (default 127.0.0.1:7070)')
    .option('--json', 'one JSON object, for scripts');
  addSecurityOptions(cmd, 'query')
    .description(
      'Splits the window into periods between changes of the Service\'s externalTrafficPolicy (as the\n' +
        'collector recorded them from Kubernetes) and shows for each: connections, the share whose\n' +
        'client address was replaced by SNAT, traffic per node (where it entered, where its pods ran),\n' +
        'attempts the kernel saw dropped on nodes without a local endpoint, traffic per endpoint and how\n' +
        'uneven it was, and what each node\'s healthCheckNodePort answered (read by the agent on that\n' +
        'node, as a cloud load balancer would). A before/after summary ends the report.',
    )
    .addHelpText('after',
      '\nExamples:\n' +
        '  natlens etp default/loadbalancer --since 30m\n' +
        '  natlens etp default/nodeport --json | jq \'.changes[] | {to_policy, snat_share, dropped}\'\n' +
        '\nEvery query needs --tls-ca (with a query certificate or a token) or --plaintext; see docs/security.md.\n')
    .action(async (service: string, opts: Record<string, string | boolean | undefined>) => {
      const cfg = resolveConfig(QUERY_SETTINGS, { collector: opts.collector as string | undefined, sinceMs: opts.since as string | undefined, ...securityFlags(opts) }, process.env, { sinceMs: '--since' });
      if (!parseNamespacedName(service)) {
        throw new UsageError(`etp: ${quoteInput(service)} is not NAMESPACE/SERVICE (e.g. default/loadbalancer)`);
      }
      const client = new QueryClient(cfg.collector, undefined, queryAccess(cfg, 'etp'));
      let res: EtpResponse;
      try {
        res = await client.etp({ service, sinceMs: BigInt(cfg.sinceMs), forwarded: false });
      } catch (err) {
        throw new NatlensError(`etp: collector ${cfg.collector}: ${(err as Error).message}`, { cause: err });
      } finally {
        client.close();
      }
      process.stdout.write(opts.json ? `${JSON.stringify(etpJson(res))}\n` : formatEtp(res));
    });
}
