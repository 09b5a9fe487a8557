// The cert-manager.io/v1 Certificate and Issuer fields (cert-manager's API reference), closed:
// a misspelt or misplaced field, a wrong type or an unknown usage fails validation as cert-manager's
// CRD schema would reject it. kubernetes-models has no cert-manager kinds; the package
// @kubernetes-models/cert-manager does, and can replace this once it is a dev dependency.
import { Ajv } from 'ajv';

const str = { type: 'string' };
const strings = { type: 'array', items: str };
const closed = (properties: Record<string, unknown>, required: string[] = []) => ({ type: 'object', additionalProperties: false, properties, required });
const duration = { type: 'string', pattern: '^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$' };

const metadata = closed({
  name: { type: 'string', pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$', maxLength: 253 },
  namespace: str,
  labels: { type: 'object', additionalProperties: str },
  annotations: { type: 'object', additionalProperties: str },
}, ['name']);

const issuerRef = closed({ name: str, kind: str, group: str }, ['name']);

export const KEY_USAGES = [
  'signing', 'digital signature', 'content commitment', 'key encipherment', 'key agreement', 'data encipherment',
  'cert sign', 'crl sign', 'encipher only', 'decipher only', 'any', 'server auth', 'client auth', 'code signing',
  'email protection', 's/mime', 'ipsec end system', 'ipsec tunnel', 'ipsec user', 'timestamping', 'ocsp signing',
  'microsoft sgc', 'netscape sgc',
];

const certificate = closed({
  apiVersion: { const: 'cert-manager.io/v1' },
  kind: { const: 'Certificate' },
  metadata,
  spec: closed({
    secretName: { type: 'string', minLength: 1 },
    issuerRef,
    commonName: { type: 'string', maxLength: 64 },
    literalSubject: str,
    subject: closed({
      organizations: strings, countries: strings, organizationalUnits: strings, localities: strings,
      provinces: strings, streetAddresses: strings, postalCodes: strings, serialNumber: str,
    }),
    dnsNames: strings,
    ipAddresses: strings,
    uris: strings,
    emailAddresses: strings,
    duration,
    renewBefore: duration,
    renewBeforePercentage: { type: 'integer' },
    isCA: { type: 'boolean' },
    usages: { type: 'array', items: { enum: KEY_USAGES } },
    privateKey: closed({
      rotationPolicy: { enum: ['Never', 'Always'] },
      encoding: { enum: ['PKCS1', 'PKCS8'] },
      algorithm: { enum: ['RSA', 'ECDSA', 'Ed25519'] },
      size: { type: 'integer' },
    }),
    secretTemplate: closed({ annotations: { type: 'object', additionalProperties: str }, labels: { type: 'object', additionalProperties: str } }),
    encodeUsagesInRequest: { type: 'boolean' },
    revisionHistoryLimit: { type: 'integer', minimum: 1 },
  }, ['secretName', 'issuerRef']),
}, ['apiVersion', 'kind', 'metadata', 'spec']);

const issuer = closed({
  apiVersion: { const: 'cert-manager.io/v1' },
  kind: { const: 'Issuer' },
  metadata,
  spec: {
    ...closed({
      selfSigned: closed({ crlDistributionPoints: strings }),
      ca: closed({ secretName: { type: 'string', minLength: 1 }, crlDistributionPoints: strings, ocspServers: strings, issuingCertificateURLs: strings }, ['secretName']),
    }),
    // Exactly one kind of issuer (acme, vault and venafi are not used by natlens, so not allowed here).
    minProperties: 1,
    maxProperties: 1,
  },
}, ['apiVersion', 'kind', 'metadata', 'spec']);

const ajv = new Ajv({ allErrors: true, strict: false });
const validators = { Certificate: ajv.compile(certificate), Issuer: ajv.compile(issuer) };

/** Throws naming every problem, as kubernetes-models' validate() does. */
export function validateCertManager(kind: 'Certificate' | 'Issuer', obj: unknown): void {
  const validate = validators[kind];
  if (!validate(obj)) {
    throw new Error((validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message}${e.params && 'additionalProperty' in e.params ? ` '${String(e.params.additionalProperty)}'` : ''}`).join('; '));
  }
}

/** kubernetes-models-shaped classes for the MODELS table of the chart tests. */
export class CertManagerCertificate {
  constructor(private readonly data: unknown) {}
  validate(): void {
    validateCertManager('Certificate', this.data);
  }
}
export class CertManagerIssuer {
  constructor(private readonly data: unknown) {}
  validate(): void {
    validateCertManager('Issuer', this.data);
  }
}
