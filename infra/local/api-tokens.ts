/**
 * The embedded API's callers: one random bearer token per API caller role (read-only, operator,
 * admin — the roles infra/aws/constructs/api-callers.ts synthesizes). `npm start` writes them to
 * `<dataDir>/api-tokens.json`, readable by its owner only (0600), new on every start; the CLI reads
 * that file (or STRATA_API_TOKEN). A token stands for a session of its role, and each request is
 * authorized against that role's synthesized policy, as API Gateway's IAM authorization does.
 *
 * A custom Authorization header also means a browser must send a CORS preflight before any
 * cross-site request, which the server never grants: another site's page cannot call the API.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmod, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type { ApiCallerRole } from '../aws/constructs/api-callers.js';

export const API_TOKENS_FILE = 'api-tokens.json';

export const API_CALLER_ROLES = ['readOnly', 'operator', 'admin'] as const satisfies readonly ApiCallerRole[];

export const ApiTokensSchema = z.object({
  readOnly: z.string().min(32),
  operator: z.string().min(32),
  admin: z.string().min(32),
});
export type ApiTokens = z.infer<typeof ApiTokensSchema>;

/** New tokens (256 random bits each, URL-safe). */
export function newApiTokens(): ApiTokens {
  const token = () => `strata_${randomBytes(32).toString('base64url')}`;
  return { readOnly: token(), operator: token(), admin: token() };
}

/**
 * Writes the tokens to `<dataDir>/api-tokens.json` with mode 0600 (through a temporary file, so a
 * reader never sees half a file and an older file's looser mode is not kept).
 */
export async function writeApiTokens(dataDir: string, tokens: ApiTokens): Promise<string> {
  const file = path.join(dataDir, API_TOKENS_FILE);
  const temporary = `${file}.${process.pid}.tmp`;
  await writeFile(temporary, `${JSON.stringify(tokens, null, 2)}\n`, { mode: 0o600 });
  // The umask cannot widen 0600, but a file left by an earlier run might have another mode.
  await chmod(temporary, 0o600);
  await rename(temporary, file);
  return file;
}

/**
 * Finds the role a presented token belongs to, comparing in constant time (digests of equal
 * length, so neither the token's length nor its first differing byte shows in the timing).
 */
export function roleOfToken(tokens: ApiTokens, presented: string): ApiCallerRole | undefined {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const given = digest(presented);
  let found: ApiCallerRole | undefined;
  for (const role of API_CALLER_ROLES) {
    if (timingSafeEqual(digest(tokens[role]), given)) found = role;
  }
  return found;
}

/** The bearer token of an Authorization header, or undefined when there is none. */
export function bearerToken(header: string | undefined): string | undefined {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  return match?.[1];
}
