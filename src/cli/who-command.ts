import { Command } from 'commander';
import { QUERY_SETTINGS, resolveConfig } from '../config.js';
import { parseTarget } from '../query/target.js';
import { captureFaultLines, captureFaultsJson } from '../query/completeness-format.js';
import { QueryClient } from '../transport/query-client.js';
import { addSecurityOptions, queryAccess, securityFlags } from './security-options.js';
import type { WhoResponse } from '../transport/proto.generated.js';
import { NatlensError, UsageError } from '../util/errors.js';

export function registerWhoCommand(program: Command): void {
  const cmd = program
    .command('who')
    .summary('who really called this pod: real clients next to the address the pod saw')
    .argument('<target>', 'the pod: NAMESPACE/POD, IP, IP:PORT or [IPv6]:PORT')
    .option('--since <duration>', 'look back this far (default 1h)')
    .option('--collector <host:port>', 'the collector to ask (default 127.0.0.1:7070)')
    .option('--json', 'one JSON object, for scripts');
  addSecurityOptions(cmd, 'query')
    .description(
      'Lists the clients that connected to TARGET: the real caller (CLIENT), the source address the\n' +
        'pod saw (SEEN AS; a node address when a node SNAT\'d the connection), how many connections,\n' +
        'the node where the connection entered the Service path (INGRESS) and the node of the pod\n' +
        '(ENDPOINT), and the Service the client dialled. When a proxy load balancer sent a PROXY protocol\n' +
        'header, CLIENT is the client the header named (VIA: the proxy); when the load balancer proxies\n' +
        'and sends nothing, CLIENT says so instead of guessing. TERM counts connections that reached the\n' +
        'pod while it was terminating. The last lines say how much of the answer may be missing: events\n' +
        'lost by agents (where the kernel\'s ring buffer overflowed: per node and CPU), connections whose\n' +
        'hops could not all be joined (their unknown parts show as "?"), and times a node was not captured\n' +
        'at all (its agent crashed or was stopped).',
    )
    .addHelpText('after',
      '\nExamples:\n' +
        '  natlens who default/source-ip-app-7c9d8b5f4-x2x9q\n' +
        '  natlens who 10.180.1.136\n' +
        '  natlens who 10.180.1.136:8080 --since 10m --json | jq \'.rows[] | select(.snat)\'\n' +
        '  # TLS with a token (or --tls-cert/--tls-key of a query certificate); a lab collector: --plaintext\n' +
        '  natlens who default/web-0 --tls-ca ca.crt --token-file ~/.config/natlens/token\n' +
        '\nEvery query needs --tls-ca (with a query certificate or a token) or --plaintext; see docs/security.md.\n')
    .action(async (targetText: string, opts: Record<string, string | boolean | undefined>) => {
      const cfg = resolveConfig(QUERY_SETTINGS, { collector: opts.collector as string | undefined, sinceMs: opts.since as string | undefined, ...securityFlags(opts) }, process.env, { sinceMs: '--since' });
      const target = parseTarget(targetText);
      if (typeof target === 'string') throw new UsageError(`who: ${target}`);
      const client = new QueryClient(cfg.collector, undefined, queryAccess(cfg, 'who'));
      let res: WhoResponse;
      try {
        res = await client.who({ target: targetText, sinceMs: BigInt(cfg.sinceMs), forwarded: false });
      } catch (err) {
        throw new NatlensError(`who: collector ${cfg.collector}: ${(err as Error).message}`, { cause: err });
      } finally {
        client.close();
      }
      process.stdout.write(opts.json ? `${JSON.stringify(whoJson(res))}\n` : formatWho(res));
    });
}

/** The --json shape (documented in README): snake_case, plain numbers. */
export function whoJson(res: WhoResponse) {
  const c = res.complete;
  return {
    target: res.target,
    pod: res.pod || null,
    node: res.node || null,
    since: res.since,
    rows: res.rows.map((r) => ({
      client: r.client === '' || r.clientSource === 'proxy-not-carried' ? null : r.client,
      client_source: r.clientSource || 'kernel',
      proxy: r.proxy || null,
      seen_as: r.seenAs,
      service: r.service || null,
      service_port: r.servicePort || null,
      frontend: r.frontend || null,
      dialled: r.dialled || null,
      pod: r.pod || null,
      while_terminating: Number(r.whileTerminating),
      connections: Number(r.connections),
      ingress_node: r.ingressNode || null,
      endpoint_node: r.endpointNode || null,
      snat: r.snat,
      stitched: r.stitched,
      protocols: r.protocols,
      first_seen: r.firstSeen,
      last_seen: r.lastSeen,
    })),
    complete: {
      events_lost: Number(c?.eventsLost ?? 0n),
      lost_by_stage: Object.fromEntries(Object.entries(c?.lostByStage ?? {}).map(([k, v]) => [k, Number(v)])),
      unstitched: Number(c?.unstitched ?? 0n),
      nodes_reporting: c?.nodesReporting ?? [],
      collectors: c?.collectors ?? [],
      ...captureFaultsJson(c),
    },
  };
}

export function formatWho(res: WhoResponse): string {
  const j = whoJson(res);
  const head = ['CLIENT', 'VIA', 'SEEN AS', 'CONNS', 'TERM', 'SERVICE', 'INGRESS', 'ENDPOINT', 'SNAT', 'PROTO', 'LAST SEEN'];
  const clientCell = (r: (typeof j.rows)[number]): string => {
    if (r.client_source === 'proxy-not-carried') return 'unknown (proxy sent no header)';
    if (r.client === null) return '?';
    return r.client_source.startsWith('proxy-protocol-') ? `${r.client} (${r.client_source.replace('proxy-protocol-', 'PROXY ')})` : r.client;
  };
  const serviceCell = (r: (typeof j.rows)[number]): string => (r.service ? `${r.service}:${r.service_port} (${r.frontend})` : r.dialled ?? '-');
  const rows = j.rows.map((r) => [
    clientCell(r), r.proxy ?? '-', r.seen_as, String(r.connections), String(r.while_terminating), serviceCell(r), r.ingress_node ?? '?',
    r.endpoint_node ?? '?', r.snat ? 'yes' : 'no', r.protocols.join(','), r.last_seen,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  const pod = j.pod && j.pod !== j.target ? ` (pod ${j.pod}${j.node ? ` on ${j.node}` : ''})` : j.node ? ` (on ${j.node})` : '';
  const out = [`who called ${j.target}${pod} since ${j.since}`];
  if (rows.length === 0) out.push('  no connections stored for this target in the window');
  else out.push(line(head), ...rows.map(line));
  const c = j.complete;
  const stages = Object.entries(c.lost_by_stage).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(', ');
  out.push(
    '',
    `complete: ${c.events_lost} events lost${stages ? ` (${stages})` : ''}; ${c.unstitched} connections with a hop missing; ` +
      `agents reporting: ${c.nodes_reporting.join(', ') || 'none'}; collectors: ${c.collectors.join(', ')}`,
    ...captureFaultLines(c).map((l) => `  ${l}`),
  );
  return `${out.join('\n')}\n`;
}
