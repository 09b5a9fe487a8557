/**
 * The collector's working shapes: a Hop (what one node saw of one connection, normalised from a
 * proto HopEvent) and a ConnectionRecord (the stitched answer). Stored as the ClickHouse rows of
 * `hops` and `connections` (see store/schema.ts, the one place their columns are declared).
 */

/** An address as 16 bytes: IPv6, or IPv4 mapped (::ffff:a.b.c.d), as ClickHouse's IPv6 type holds it. */
export type Addr16 = Uint8Array;

export interface WireTuple {
  src: Addr16;
  sport: number;
  dst: Addr16;
  dport: number;
}

/** 'proxy': a PROXY protocol header at the start of a connection to a local pod (see agent.proto). */
export type HopKind = 'conn' | 'drop' | 'end' | 'proxy';
export type Proto = 'tcp' | 'udp';

export interface Hop {
  /** Deterministic: the same event resent after a reconnect has the same id (duplicates collapse). */
  id: bigint;
  node: string;
  kind: HopKind;
  proto: Proto;
  family: 4 | 6;
  /** CLOCK_REALTIME nanoseconds. */
  tsNs: bigint;
  /** Conntrack ORIGINAL direction: as the packet arrived at this node. */
  orig: WireTuple;
  /** Conntrack REPLY direction (post-NAT); null for drops. For 'proxy' hops: the connection the
   * PROXY header describes (src = the real client, dst = what it connected to). */
  reply: WireTuple | null;
  ctStatus: number;
  /** TCP initial sequence number, null when unknown. */
  isn: number | null;
  ifname: string;
  /** The packet left towards a pod on this node: this node hosts the endpoint. */
  deliveredLocal: boolean;
  packetsOrig: number;
  bytesOrig: number;
  packetsReply: number;
  bytesReply: number;
  /** 'proxy' hops: PROXY protocol version 1 or 2; 0 otherwise. */
  proxyVersion: number;
}

/** 'superseded': this connId was absorbed into another connection record (a late hop joined two partial chains). */
export type StitchStatus = 'complete' | 'unstitched' | 'superseded';

/** One connection, all its hops joined: who called, what the pod saw, which nodes it crossed. */
export interface ConnectionRecord {
  /** Stable across re-emissions (a late hop updates the record under the same id). */
  connId: bigint;
  /**
   * Higher wins when the same connId is stored twice: status rank << 24 | hops << 16 | emission count,
   * so a more complete record of one connection outranks a partial one whatever order they arrive in.
   */
  version: number;
  /** Time of the first hop of the chain (ns). */
  tsNs: bigint;
  /** Time of the last hop of the chain (ns). */
  lastTsNs: bigint;
  proto: Proto;
  family: 4 | 6;
  /** The pod (post-DNAT destination) and its port. */
  endpoint: Addr16;
  endpointPort: number;
  /** What the client dialled (Service VIP:port, node:NodePort, or the pod itself). */
  service: Addr16;
  servicePort: number;
  /** The real caller: the first hop's original source. Null when that hop was not captured. */
  client: Addr16 | null;
  clientPort: number;
  /** The source address and port the pod saw. */
  seenAs: Addr16;
  seenAsPort: number;
  ingressNode: string;
  /** '' when the hop on the endpoint's node was not captured. */
  endpointNode: string;
  snat: boolean;
  status: StitchStatus;
  /** Nodes in path order. */
  hopNodes: string[];
  isn: number | null;
}

/** An agent's cumulative loss counters, as reported at `tsNs`. */
export interface LossSample {
  tsNs: bigint;
  node: string;
  agentId: string;
  /** Stage -> events lost since the agent started. */
  lost: Record<string, number>;
  captured: number;
  /** CPU number -> lost.ringbuf_full of that CPU since the agent started (CPUs that lost any). */
  ringbufFullPerCpu?: Record<string, number>;
}

/** A time a node was not captured (proto CaptureGap), as an agent reported it. */
export interface CaptureGapRecord {
  node: string;
  agentId: string;
  /** Last known captured (ns). */
  fromNs: bigint;
  /** Capture resumed (ns). */
  toNs: bigint;
  cause: string;
  reason: string;
  previousPid: number;
}
