// Apply the generated kube-proxy rules inside a node namespace, the way
// kube-proxy does it:
// - iptables mode: ensure the jump rules in the built-in chains
//   (`iptables -C` || `iptables -I`), read the existing nat chains
//   (`iptables-save -t nat`, to delete stale service chains), then one
//   `iptables-restore -w --noflush --counters` per family carrying the filter and
//   nat tables (each table is committed atomically), for IPv4 and IPv6.
// - nftables mode: list the table's chains, then one `nft -f -` transaction per
//   family (atomic), then a second transaction deleting stale chains.

import { nsRun, shQuote } from './exec.js';
import type { IPFamily } from './kube-proxy-model.js';
import { chainsFromSave, generateIptablesRules } from './kube-proxy-iptables.js';
import { chainsFromNftList, generateNftablesRules } from './kube-proxy-nftables.js';
import { proxyNode, proxyServicePorts } from './topology.js';
import type { LabNode, LabState } from './types.js';

const FAMILIES: IPFamily[] = [4, 6];

export async function applyKubeProxy(state: LabState, node: LabNode, opts: { ensureJumps?: boolean } = {}): Promise<void> {
  await Promise.all(
    FAMILIES.map((family) =>
      state.proxyMode === 'nftables'
        ? applyNftables(state, node, family)
        : applyIptables(state, node, family, opts.ensureJumps ?? true),
    ),
  );
}

async function applyIptables(state: LabState, node: LabNode, family: IPFamily, ensureJumps: boolean): Promise<void> {
  const cmd = family === 6 ? 'ip6tables' : 'iptables';
  const save = await nsRun(node.netns, `${cmd}-save`, ['-t', 'nat']);
  const sync = generateIptablesRules(proxyNode(state, node.name, family), proxyServicePorts(state, family), {
    existingNatChains: chainsFromSave(save.stdout),
  });
  if (ensureJumps) {
    // kube-proxy's EnsureChain + EnsureRule(Prepend) for each jump rule.
    const script = sync.jumpRules
      .map((j) => {
        const args = j.args.map(shQuote).join(' ');
        return (
          `${cmd} -w 5 -t ${j.table} -N ${j.dstChain} 2>/dev/null; ` +
          `${cmd} -w 5 -t ${j.table} -C ${j.srcChain} ${args} 2>/dev/null || ${cmd} -w 5 -t ${j.table} -I ${j.srcChain} ${args} || exit 1`
        );
      })
      .join('\n');
    await nsRun(node.netns, 'sh', ['-c', script]);
  }
  await nsRun(node.netns, `${cmd}-restore`, ['-w', '5', '--noflush', '--counters'], { input: sync.restore });
}

async function applyNftables(state: LabState, node: LabNode, family: IPFamily): Promise<void> {
  const fam = family === 6 ? 'ip6' : 'ip';
  const list = await nsRun(node.netns, 'nft', ['list', 'table', fam, 'kube-proxy'], { allowFail: true });
  const sync = generateNftablesRules(proxyNode(state, node.name, family), proxyServicePorts(state, family), {
    existingChains: list.code === 0 ? chainsFromNftList(list.stdout) : [],
  });
  await nsRun(node.netns, 'nft', ['-f', '-'], { input: sync.script });
  // kube-proxy waits before deleting flushed stale chains (kernels < 6.2 notice
  // unreferenced chains late); the lab targets newer kernels and deletes at once.
  if (sync.cleanupScript) await nsRun(node.netns, 'nft', ['-f', '-'], { input: sync.cleanupScript });
}

/** The rules as installed (for `lab status` / debugging). */
export async function dumpKubeProxy(state: LabState, node: LabNode): Promise<string> {
  if (state.proxyMode === 'nftables') {
    const parts = await Promise.all(
      ['ip', 'ip6'].map((f) => nsRun(node.netns, 'nft', ['list', 'table', f, 'kube-proxy'], { allowFail: true })),
    );
    return parts.map((p) => p.stdout).join('\n');
  }
  const parts = await Promise.all(['iptables-save', 'ip6tables-save'].map((c) => nsRun(node.netns, c, [], { allowFail: true })));
  return parts.map((p) => p.stdout).join('\n');
}
