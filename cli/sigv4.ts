/**
 * SigV4 signing for a Strata API deployed behind API Gateway with IAM authorization.
 *
 * The embedded stack needs no signing, so it is switched on only for AWS hosts (or explicitly with
 * STRATA_SIGV4=1, for a custom domain in front of API Gateway).
 */
import { Sha256 } from '@aws-crypto/sha256-js';
import { SignatureV4 } from '@smithy/signature-v4';
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider } from '@smithy/types';

export type Env = Record<string, string | undefined>;

/** The request as the HTTP client is about to send it. */
export interface SignableRequest {
  method: string;
  url: URL;
  headers: Record<string, string>;
  body?: string;
}

/** Returns the headers to send: the originals plus Authorization, X-Amz-Date and friends. */
export type RequestSigner = (request: SignableRequest) => Promise<Record<string, string>>;

export class SigningConfigError extends Error {
  override readonly name = 'SigningConfigError';
}

const EXECUTE_API_HOST = /\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$/i;

/** Whether requests to `url` must be signed. */
export function shouldSign(url: URL, env: Env): boolean {
  const flag = env['STRATA_SIGV4'];
  if (flag === '1' || flag === 'true') return true;
  if (flag === '0' || flag === 'false') return false;
  return /(^|\.)amazonaws\.com(\.cn)?$/i.test(url.hostname);
}

/** The signing region: from an `execute-api.<region>.amazonaws.com` host, else from the environment. */
export function resolveRegion(url: URL, env: Env): string {
  const fromHost = EXECUTE_API_HOST.exec(url.hostname)?.[1];
  const region = fromHost ?? env['AWS_REGION'] ?? env['AWS_DEFAULT_REGION'];
  if (!region) {
    throw new SigningConfigError(
      `cannot tell which AWS region to sign for ${url.host}: set AWS_REGION (or use the execute-api URL)`,
    );
  }
  return region;
}

/**
 * Credentials from the given environment when it carries static keys (so `run()` can be driven
 * with an explicit env), otherwise the SDK's default Node chain: env, SSO, ini profiles, process,
 * container and instance metadata.
 */
export function resolveCredentials(env: Env): AwsCredentialIdentity | AwsCredentialIdentityProvider {
  const accessKeyId = env['AWS_ACCESS_KEY_ID'];
  const secretAccessKey = env['AWS_SECRET_ACCESS_KEY'];
  if (accessKeyId && secretAccessKey) {
    const sessionToken = env['AWS_SESSION_TOKEN'];
    return sessionToken ? { accessKeyId, secretAccessKey, sessionToken } : { accessKeyId, secretAccessKey };
  }
  let chain: AwsCredentialIdentityProvider | undefined;
  return async () => {
    // Loaded on first use only: the provider chain pulls in a lot of SDK code that `strata --help`
    // and every unsigned local call would otherwise pay for at start-up.
    if (!chain) {
      const { fromNodeProviderChain } = await import('@aws-sdk/credential-providers');
      chain = fromNodeProviderChain(env['AWS_PROFILE'] ? { profile: env['AWS_PROFILE'] } : {});
    }
    return chain();
  };
}

export interface SignerOptions {
  region: string;
  credentials: AwsCredentialIdentity | AwsCredentialIdentityProvider;
  /** Fixed signing time, for reproducible signatures in tests. */
  signingDate?: Date;
}

/** A signer for the `execute-api` service. */
export function createSigner(options: SignerOptions): RequestSigner {
  const signer = new SignatureV4({
    service: 'execute-api',
    region: options.region,
    credentials: options.credentials,
    sha256: Sha256,
  });
  return async ({ method, url, headers, body }) => {
    const query: Record<string, string | string[]> = {};
    for (const [key, value] of url.searchParams) {
      const prior = query[key];
      query[key] = prior === undefined ? value : Array.isArray(prior) ? [...prior, value] : [prior, value];
    }
    const signed = await signer.sign(
      {
        method,
        protocol: url.protocol,
        hostname: url.hostname,
        ...(url.port ? { port: Number(url.port) } : {}),
        path: url.pathname,
        query,
        // The Host header is part of the signature; fetch sends exactly `url.host`.
        headers: { ...headers, host: url.host },
        ...(body === undefined ? {} : { body }),
      },
      options.signingDate ? { signingDate: options.signingDate } : {},
    );
    const out: Record<string, string> = {};
    for (const [key, value] of Object.entries(signed.headers)) {
      // fetch derives Host from the URL and refuses to let callers override it.
      if (key.toLowerCase() !== 'host') out[key] = value;
    }
    return out;
  };
}

/** The signer `run()` uses for `baseUrl`, or undefined when signing is off. */
export function signerFor(baseUrl: URL, env: Env): RequestSigner | undefined {
  if (!shouldSign(baseUrl, env)) return undefined;
  return createSigner({ region: resolveRegion(baseUrl, env), credentials: resolveCredentials(env) });
}
