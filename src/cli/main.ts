/** natlens: one entry point, subcommands per concern. */
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { registerAgentCommand } from './agent-command.js';
import { registerDoctorCommand } from './doctor-command.js';
import { registerDemoCommand } from './demo-command.js';
import { registerCollectorCommand } from './collector-command.js';
import { registerWhoCommand } from './who-command.js';
import { registerEtpCommand } from './etp-command.js';
import { registerCertsCommand } from './certs-command.js';
import { registerLabCommands } from '../lab/commands.js';
import { NatlensError, describeError } from '../util/errors.js';
import { PACKAGE_ROOT } from '../util/paths.js';

export function buildProgram(): Command {
  const pkg = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string };
  const program = new Command('natlens')
    .version(pkg.version)
    .description(
      'natlens answers "who really called this pod?" with evidence from the kernel: eBPF programs on each\n' +
        'node record every Service connection before and after kube-proxy\'s NAT.\n\n' +
        'Start here:\n' +
        '  natlens doctor                     can capture run on this kernel?\n' +
        '  natlens lab up                     build the source-IP tutorial\'s cluster from network namespaces\n' +
        '  natlens agent --node node2 --netns /run/netns/nl-node2 --stdout\n' +
        '  natlens lab curl client nodeport@node2\n' +
        '  natlens demo                       all of the above, narrated',
    )
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerAgentCommand(program);
  registerCollectorCommand(program);
  registerWhoCommand(program);
  registerEtpCommand(program);
  registerDoctorCommand(program);
  registerCertsCommand(program);
  registerLabCommands(program);
  registerDemoCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are "errors" to commander; usage mistakes exit 2 like every Unix tool
      // (help shown for a missing subcommand, `natlens lab`, is one: commander gives it exit code 1).
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return 0;
      if (err.code === 'commander.help') return err.exitCode === 0 ? 0 : 2;
      return 2;
    }
    process.stderr.write(`natlens: error: ${describeError(err)}\n`);
    return err instanceof NatlensError ? err.exitCode : 1;
  }
}
