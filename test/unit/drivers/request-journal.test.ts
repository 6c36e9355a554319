import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RequestJournal } from '../../../drivers/sdk/request-journal.js';

let root: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'strata-journal-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

const soon = () => Date.now() + 5_000;

describe('the host request journal', () => {
  it('lets one delivery run, records its result, and answers later deliveries with it', async () => {
    const journal = new RequestJournal<{ v: number }>(root);
    const first = await journal.begin('req-a', 'fp', soon());
    expect(first.kind).toBe('run');
    if (first.kind === 'run') await first.record({ v: 1 });
    expect(await journal.begin('req-a', 'fp', soon())).toEqual({ kind: 'recorded', result: { v: 1 } });
  });

  it('takes over the lock of a runner that died, and runs again', async () => {
    await mkdir(join(root, 'requests'), { recursive: true });
    await writeFile(
      join(root, 'requests', 'req-b.lock'),
      JSON.stringify({ pid: 999_999, fingerprint: 'fp' }),
    );
    const journal = new RequestJournal<{ v: number }>(root, { isAlive: () => false });
    expect((await journal.begin('req-b', 'fp', soon())).kind).toBe('run');
  });

  it('waits for a live runner, and gives up at the wait limit', async () => {
    await mkdir(join(root, 'requests'), { recursive: true });
    await writeFile(
      join(root, 'requests', 'req-c.lock'),
      JSON.stringify({ pid: process.pid, fingerprint: 'fp' }),
    );
    const journal = new RequestJournal<{ v: number }>(root, { pollMs: 10 });
    const waiting = journal.begin('req-c', 'fp', Date.now() + 200);
    await expect(waiting).resolves.toMatchObject({
      kind: 'mismatch',
      message: expect.stringContaining('still running'),
    });
  });

  it('refuses a request id reused for another request, and ids that are not file-safe', async () => {
    const journal = new RequestJournal<{ v: number }>(root);
    const first = await journal.begin('req-d', 'fp-1', soon());
    if (first.kind === 'run') await first.record({ v: 1 });
    expect(await journal.begin('req-d', 'fp-2', soon())).toMatchObject({ kind: 'mismatch' });
    await expect(journal.begin('../etc/passwd', 'fp', soon())).rejects.toThrow(/journal-safe/);
  });
});
