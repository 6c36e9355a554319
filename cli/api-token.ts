/**
 * The bearer token for the embedded stack's API (SigV4 is for API Gateway; the local API wants a
 * token per caller role instead). STRATA_API_TOKEN wins; otherwise, for an API on this machine
 * only, the token of STRATA_API_ROLE (default admin: whoever can read the stack's data directory
 * runs it) from `<STRATA_DATA_DIR or .strata>/api-tokens.json`, which `npm start` writes with mode
 * 0600. A token file is never read for a remote URL, so a local token never leaves the machine.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Env } from './sigv4.js';

export const API_TOKENS_FILE = 'api-tokens.json';
const ROLES = ['readOnly', 'operator', 'admin'] as const;

export class ApiTokenConfigError extends Error {
  override readonly name = 'ApiTokenConfigError';
}

function isLoopback(url: URL): boolean {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * The token to send to `baseUrl`, or undefined (no file yet: the API's 401 then says where to look).
 *
 * @example
 * resolveApiToken(new URL('http://127.0.0.1:8787'), { STRATA_API_ROLE: 'readOnly' }, process.cwd());
 */
export function resolveApiToken(baseUrl: URL, env: Env, cwd: string): string | undefined {
  const explicit = env['STRATA_API_TOKEN'];
  if (explicit) return explicit;
  if (!isLoopback(baseUrl)) return undefined;
  const role = env['STRATA_API_ROLE'] || 'admin';
  if (!(ROLES as readonly string[]).includes(role)) {
    throw new ApiTokenConfigError(`STRATA_API_ROLE must be one of ${ROLES.join(', ')}, not '${role}'`);
  }
  const file = path.resolve(cwd, env['STRATA_DATA_DIR'] || '.strata', API_TOKENS_FILE);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
  let tokens: unknown;
  try {
    tokens = JSON.parse(text);
  } catch {
    throw new ApiTokenConfigError(`${file} is not JSON; restart the stack (npm start) to write it again`);
  }
  const token = (tokens as Record<string, unknown> | null)?.[role];
  if (typeof token !== 'string' || token === '') {
    throw new ApiTokenConfigError(`${file} has no ${role} token`);
  }
  return token;
}
