import { Command, Option } from 'commander';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { CertIssueError, DEFAULT_CA_DAYS, DEFAULT_LEAF_DAYS, createCa, issueCertificate, newToken } from '../transport/cert-issuer.js';
import { ROLES, rolesOfSubjectAltName, type Role } from '../transport/tls.js';

const list = (v: string | undefined): string[] => (v ? v.split(',').map((x) => x.trim()).filter(Boolean) : []);
const days = (v: string | undefined, fallback: number): number => {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 36_500) throw new CertIssueError(`--days: '${v}' must be a whole number from 1 to 36500`, { exitCode: 2 });
  return n;
};

export function registerCertsCommand(program: Command): void {
  const certs = program
    .command('certs')
    .summary('issue the CA, agent, collector and query certificates for mutual TLS (openssl), and query tokens')
    .description(
      'natlens authenticates every connection with certificates from one CA; the role a certificate\n' +
        'carries (URI SAN spiffe://natlens/ROLE/NAME) says what it may do:\n' +
        '  agent      stream events to a collector\n' +
        '  collector  serve agents and queries; forward to and query its peers\n' +
        '  query      ask who / etp\n' +
        'Keys are ECDSA P-256. In a cluster, cert-manager can issue the same certificates: docs/security.md.',
    )
    .addHelpText('after',
      '\nExamples:\n' +
        '  natlens certs ca --dir pki\n' +
        '  natlens certs issue --dir pki --role collector --name collector --dns natlens-collector.natlens.svc --ip 127.0.0.1\n' +
        '  natlens certs issue --dir pki --role agent --name node1\n' +
        '  natlens certs issue --dir pki --role query --name alice\n' +
        '  natlens certs token >> pki/query-tokens      # for natlens collector --query-token-file\n' +
        '  natlens certs show pki/node1.crt\n');

  certs
    .command('ca')
    .summary('create a CA: DIR/ca.crt and DIR/ca.key (keep the key offline)')
    .requiredOption('--dir <dir>', 'where ca.crt and ca.key go')
    .option('--days <n>', `validity (default ${DEFAULT_CA_DAYS})`)
    .option('--name <cn>', 'the CA\'s common name (default "natlens CA")')
    .option('--force', 'replace an existing CA (every certificate it issued stops being trusted)')
    .action((opts: { dir: string; days?: string; name?: string; force?: boolean }) => {
      const files = createCa({ dir: opts.dir, days: days(opts.days, DEFAULT_CA_DAYS), commonName: opts.name, force: opts.force });
      process.stdout.write(`${files.cert}\n${files.key}\n`);
    });

  certs
    .command('issue')
    .summary('issue a certificate for one role, signed by the CA in --dir: NAME.crt and NAME.key')
    .requiredOption('--dir <dir>', 'the CA\'s directory (ca.crt, ca.key)')
    .addOption(new Option('--role <role>', 'what the certificate may do').choices([...ROLES]).makeOptionMandatory())
    .requiredOption('--name <name>', 'node name (agent), collector name, or user/script name (query)')
    .option('--dns <names>', 'DNS names the collector is reached by, comma-separated (role collector)')
    .option('--ip <addresses>', 'IP addresses the collector is reached by, comma-separated (role collector)')
    .option('--days <n>', `validity (default ${DEFAULT_LEAF_DAYS})`)
    .option('--out <dir>', 'write NAME.crt and NAME.key here instead of --dir')
    .option('--force', 'replace existing files (rotation)')
    .action((opts: { dir: string; role: Role; name: string; dns?: string; ip?: string; days?: string; out?: string; force?: boolean }) => {
      const files = issueCertificate({
        caDir: opts.dir, outDir: opts.out, role: opts.role, name: opts.name, dns: list(opts.dns), ips: list(opts.ip),
        days: days(opts.days, DEFAULT_LEAF_DAYS), force: opts.force,
      });
      process.stdout.write(`${files.cert}\n${files.key}\n`);
    });

  certs
    .command('token')
    .summary('print a new random query token (one line for --query-token-file, and for --token-file / NATLENS_TOKEN)')
    .action(() => {
      process.stdout.write(`${newToken()}\n`);
    });

  certs
    .command('show')
    .summary('what a certificate is: subject, roles, names, validity')
    .argument('<file>', 'PEM certificate')
    .option('--json', 'one JSON object')
    .action((file: string, opts: { json?: boolean }) => {
      let cert: X509Certificate;
      try {
        cert = new X509Certificate(readFileSync(file));
      } catch (err) {
        throw new CertIssueError(`${file}: not a readable PEM certificate (${(err as Error).message})`, { cause: err });
      }
      const info = {
        subject: cert.subject.replace(/\n/g, ', '),
        issuer: cert.issuer.replace(/\n/g, ', '),
        roles: rolesOfSubjectAltName(cert.subjectAltName),
        subject_alt_names: cert.subjectAltName?.split(/,\s*/) ?? [],
        ca: cert.ca,
        not_before: new Date(cert.validFrom).toISOString(),
        not_after: new Date(cert.validTo).toISOString(),
        expired: new Date(cert.validTo) <= new Date(),
        serial: cert.serialNumber,
      };
      if (opts.json) process.stdout.write(`${JSON.stringify(info)}\n`);
      else process.stdout.write(Object.entries(info).map(([k, v]) => `${k.padEnd(18)} ${Array.isArray(v) ? v.join(', ') || '-' : String(v)}`).join('\n') + '\n');
    });
}
