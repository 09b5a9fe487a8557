/**
 * Scale-out: collectors share the work by endpoint (pod) address. Every hop of one connection is
 * about the same endpoint (its post-DNAT destination), so routing hops by endpoint brings all hops
 * of a connection to one collector, whichever collector the agents happen to be connected to, and
 * `who POD` is answered by that one collector's store. Rendezvous hashing: every collector computes
 * the same owner from the same peer list, and adding a peer moves only the endpoints it wins.
 */
import { toAddr16 } from './addr.js';
import { hash64 } from './hop-id.js';
import { UsageError } from '../util/errors.js';

export interface Peer {
  id: string;
  address: string;
}

export class PeerRing {
  readonly peers: Peer[];

  constructor(readonly selfId: string, peers: Peer[]) {
    this.peers = peers.length ? peers : [{ id: selfId, address: '' }];
    if (!this.peers.some((p) => p.id === selfId)) throw new UsageError(`--peers must include this collector's own --id '${selfId}'`);
  }

  /** Parses "id=host:port,id=host:port". */
  static parsePeers(text: string, source = '--peers'): Peer[] {
    if (text.trim() === '') return [];
    const seen = new Set<string>();
    return text.split(',').map((item) => {
      const m = /^([a-z0-9][a-z0-9-]*)=(\S+:\d+)$/.exec(item.trim());
      if (!m) throw new UsageError(`${source}: '${item}' must look like id=host:port (e.g. c1=10.0.0.5:7070)`);
      if (seen.has(m[1]!)) throw new UsageError(`${source}: collector id '${m[1]}' appears twice`);
      seen.add(m[1]!);
      return { id: m[1]!, address: m[2]! };
    });
  }

  get scaledOut(): boolean {
    return this.peers.length > 1;
  }

  ownerOf(endpoint: Uint8Array): Peer {
    const a = toAddr16(endpoint);
    let best = this.peers[0]!;
    let bestScore = -1n;
    for (const p of this.peers) {
      const score = hash64([p.id, a]);
      if (score > bestScore) {
        bestScore = score;
        best = p;
      }
    }
    return best;
  }

  isSelf(p: Peer): boolean {
    return p.id === this.selfId;
  }
}
