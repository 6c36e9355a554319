/**
 * The host runtime's request journal: each request id's outcome, kept in the host's work directory
 * (`<workDir>/requests/`), so a request delivered twice runs once. A control plane that asks again
 * after a crash or a lost answer — the same step, the same request id — gets the recorded result, or
 * waits for the run still going on; it never starts a second copy of an operation over the first.
 *
 * Per request id: `<id>.lock` while it runs (holding the runner's pid; made with O_EXCL, so of two
 * deliveries one runs), then `<id>.json` with the result event (written to a temporary file and
 * renamed, so a reader sees all of it or nothing). A lock whose process is gone means the runner
 * died mid-way: the next delivery takes the lock over and runs the operation again (operations are
 * written to be re-run after a crash). A request id that comes back with other arguments is refused.
 * Entries older than {@link JOURNAL_RETENTION_MS} are pruned.
 */
import { createHash } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** How long outcomes are kept: longer than any step retries a request id. */
export const JOURNAL_RETENTION_MS = 7 * 24 * 3600 * 1000;
/** Pruning looks at the directory only when it holds more entries than this. */
const PRUNE_ABOVE = 2000;

const SAFE_ID = /^[A-Za-z0-9._-]{1,128}$/;

export type JournalEntry<R> =
  | { kind: 'recorded'; result: R }
  | { kind: 'mismatch'; message: string }
  | { kind: 'run'; record(result: R): Promise<void> };

export interface RequestJournalOptions {
  /** How often a second delivery looks for the first one's result (default 200 ms). */
  pollMs?: number;
  isAlive?: (pid: number) => boolean;
  now?: () => number;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class RequestJournal<R> {
  private readonly dir: string;

  constructor(
    workDir: string,
    private readonly options: RequestJournalOptions = {},
  ) {
    this.dir = join(workDir, 'requests');
  }

  /** The fingerprint a request id is bound to: what it asks for. */
  static fingerprint(parts: unknown): string {
    return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
  }

  /**
   * Claims `requestId` for this delivery: its recorded result; a refusal when the id was used with
   * other arguments; or the right to run it (then `record` the result). When another live process
   * runs it, waits (until `waitUntil`, epoch ms) for its result.
   */
  async begin(requestId: string, fingerprint: string, waitUntil: number): Promise<JournalEntry<R>> {
    if (!SAFE_ID.test(requestId))
      throw new Error(`request id ${JSON.stringify(requestId)} is not journal-safe`);
    await mkdir(this.dir, { recursive: true });
    await this.prune().catch(() => undefined);
    const lockPath = join(this.dir, `${requestId}.lock`);
    const resultPath = join(this.dir, `${requestId}.json`);
    const isAlive = this.options.isAlive ?? processAlive;
    const now = this.options.now ?? Date.now;
    for (;;) {
      const recorded = await this.readResult(resultPath);
      if (recorded) {
        return recorded.fingerprint === fingerprint
          ? { kind: 'recorded', result: recorded.result }
          : { kind: 'mismatch', message: `request id ${requestId} was used for another request` };
      }
      const claimed = await this.tryLock(lockPath, fingerprint);
      if (claimed) return this.runEntry(lockPath, resultPath, fingerprint);
      const holder = await this.readLock(lockPath);
      if (holder && holder.fingerprint !== fingerprint) {
        return { kind: 'mismatch', message: `request id ${requestId} is running another request` };
      }
      if (!holder || !isAlive(holder.pid)) {
        // The runner died (or the lock is torn): take over and run again.
        await rm(lockPath, { force: true });
        continue;
      }
      if (now() > waitUntil) {
        return {
          kind: 'mismatch',
          message: `request id ${requestId} is still running in process ${holder.pid}`,
        };
      }
      await new Promise((r) => setTimeout(r, this.options.pollMs ?? 200));
    }
  }

  private runEntry(lockPath: string, resultPath: string, fingerprint: string): JournalEntry<R> {
    return {
      kind: 'run',
      record: async (result: R) => {
        const tmp = `${resultPath}.${process.pid}.tmp`;
        await writeFile(tmp, JSON.stringify({ fingerprint, result, at: new Date().toISOString() }));
        await rename(tmp, resultPath);
        await rm(lockPath, { force: true });
      },
    };
  }

  private async tryLock(lockPath: string, fingerprint: string): Promise<boolean> {
    try {
      const fh = await open(lockPath, 'wx');
      await fh.writeFile(JSON.stringify({ pid: process.pid, fingerprint }));
      await fh.close();
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    }
  }

  private async readLock(lockPath: string): Promise<{ pid: number; fingerprint: string } | undefined> {
    try {
      const v = JSON.parse(await readFile(lockPath, 'utf8')) as { pid?: unknown; fingerprint?: unknown };
      return typeof v.pid === 'number' && typeof v.fingerprint === 'string'
        ? { pid: v.pid, fingerprint: v.fingerprint }
        : undefined;
    } catch {
      return undefined;
    }
  }

  private async readResult(resultPath: string): Promise<{ fingerprint: string; result: R } | undefined> {
    try {
      return JSON.parse(await readFile(resultPath, 'utf8')) as { fingerprint: string; result: R };
    } catch {
      return undefined;
    }
  }

  private async prune(): Promise<void> {
    const names = await readdir(this.dir);
    if (names.length <= PRUNE_ABOVE) return;
    const cutoff = (this.options.now ?? Date.now)() - JOURNAL_RETENTION_MS;
    for (const name of names) {
      if (!name.endsWith('.json')) continue;
      const file = join(this.dir, name);
      const info = await stat(file).catch(() => undefined);
      if (info && info.mtimeMs < cutoff) await rm(file, { force: true });
    }
  }
}
