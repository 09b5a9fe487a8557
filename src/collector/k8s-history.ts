/**
 * Reads of the Kubernetes history the collector records (pod_history, service_history): which pod
 * had an address at a time, when it was terminating, and what every Service looked like last. From
 * the store, not the live watch, so answers about the past stay right after pods are gone and
 * after a collector restart.
 */
import { parseServiceState, SERVICE_STATE_COLUMNS, type ServiceStateRaw, type ServiceStateRow } from './etp.js';
import { ipText, type ClickHouseStore } from './store/clickhouse-store.js';
import { podHistoryTable, serviceHistoryTable } from './store/schema.js';

export interface PodState {
  tsNs: bigint;
  namespace: string;
  name: string;
  uid: string;
  node: string;
  ips: string[];
  terminating: boolean;
  deleted: boolean;
}

/**
 * The recorded states, oldest first, of one pod by name or of every pod that had `ip`, from the
 * last state before `sinceNs` on (that one tells what was in force when the window opened).
 */
export async function podTimeline(
  store: ClickHouseStore,
  q: { namespace: string; name: string; sinceNs: bigint } | { ip: string; sinceNs: bigint },
): Promise<PodState[]> {
  const table = store.tableName(podHistoryTable);
  const match = 'ip' in q ? 'has(ips, toIPv6({ip:String}))' : 'namespace = {ns:String} AND name = {name:String}';
  const params: Record<string, unknown> = 'ip' in q ? { ip: q.ip, since: q.sinceNs.toString() } : { ns: q.namespace, name: q.name, since: q.sinceNs.toString() };
  const cols = `toString(toUnixTimestamp64Nano(ts)) AS ts_ns, namespace, name, uid, node, arrayMap(a -> ${ipText('a')}, ips) AS ip_list, terminating, deleted`;
  const query = `
    SELECT * FROM (
      SELECT ${cols} FROM ${table} WHERE ${match} AND ts < fromUnixTimestamp64Nano({since:Int64})
      ORDER BY ts DESC LIMIT 1 BY namespace, name, uid
    )
    UNION ALL
    SELECT ${cols} FROM ${table} WHERE ${match} AND ts >= fromUnixTimestamp64Nano({since:Int64})
    ORDER BY ts_ns
    LIMIT 10000`;
  interface Raw { ts_ns: string; namespace: string; name: string; uid: string; node: string; ip_list: string[]; terminating: boolean | number; deleted: boolean | number }
  const raw = await store.select<Raw>('pod history', podHistoryTable, query, params);
  return raw
    .map((r) => ({
      tsNs: BigInt(r.ts_ns), namespace: r.namespace, name: r.name, uid: r.uid, node: r.node, ips: r.ip_list,
      terminating: Boolean(r.terminating), deleted: Boolean(r.deleted),
    }))
    .sort((a, b) => (a.tsNs < b.tsNs ? -1 : a.tsNs > b.tsNs ? 1 : 0));
}

/** The latest recorded state of every Service not deleted before `sinceNs`. */
export async function latestServiceStates(store: ClickHouseStore, sinceNs: bigint): Promise<Array<{ namespace: string; name: string; state: ServiceStateRow }>> {
  const table = store.tableName(serviceHistoryTable);
  const query = `
    SELECT namespace AS svc_namespace, name AS svc_name, ${SERVICE_STATE_COLUMNS}
    FROM ${table}
    ORDER BY namespace, name, ts DESC
    LIMIT 1 BY namespace, name`;
  const raw = await store.select<ServiceStateRaw & { svc_namespace: string; svc_name: string }>('service directory', serviceHistoryTable, query, {});
  return raw
    .map((r) => ({ namespace: r.svc_namespace, name: r.svc_name, state: parseServiceState(r) }))
    .filter((s) => !s.state.deleted || s.state.tsNs >= sinceNs);
}
