/**
 * What every benchmark needs: an embedded stack on the shared emulators' machine, a JSON API
 * caller, a job waiter that polls gently (the poller shares the machine with the flow it measures),
 * random input files and the median of rounds.
 */
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { type EmbeddedStack, startEmbeddedStack } from '../../infra/local/embedded-stack';

export interface BenchStack {
  stack: EmbeddedStack;
  /** Calls the API and returns its JSON body (undefined for a 204). */
  api: (method: string, route: string, body?: unknown) => Promise<any>;
  /** Polls a job until it succeeds (returned) or fails (thrown). */
  waitJob: (id: string) => Promise<any>;
}

/** Starts the embedded stack under `dir`/stack, with the reconciler off. */
export async function startBenchStack(
  dir: string,
  options: { fetchAllowlist?: string; pollMs?: number } = {},
): Promise<BenchStack> {
  const stack = await startEmbeddedStack({
    dataDir: path.join(dir, 'stack'),
    port: 0,
    reconcileEverySeconds: 0,
    ...(options.fetchAllowlist ? { fetchAllowlist: options.fetchAllowlist } : {}),
  });
  const api = async (method: string, route: string, body?: unknown) => {
    const res = await fetch(`${stack.url}${route}`, {
      method,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${stack.apiTokens.admin}` },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return res.status === 204 ? undefined : ((await res.json()) as any);
  };
  const pollMs = options.pollMs ?? 100;
  const waitJob = async (id: string) => {
    for (;;) {
      const job = await api('GET', `/jobs/${id}`);
      if (job.state === 'succeeded') return job;
      if (job.state === 'failed') throw new Error(`job ${id} failed: ${job.error.message}`);
      await new Promise((r) => setTimeout(r, pollMs));
    }
  };
  return { stack, api, waitJob };
}

/** Writes `bytes` random bytes to `file`, 4 MiB at a time. */
export async function writeRandomFile(file: string, bytes: number): Promise<void> {
  const fh = await open(file, 'w');
  const piece = 4 * 2 ** 20;
  for (let written = 0; written < bytes; written += piece) {
    await fh.write(randomBytes(Math.min(piece, bytes - written)));
  }
  await fh.close();
}

/** The median; with an even count, the mean of the middle two. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
