/**
 * Lazy restore on a real host runtime: the daemon is the bundled host-main started detached, the
 * volume a real qcow2 overlay on its NBD export, read and written with qemu-io; the chunks come from
 * an HTTP server that holds each chunk's GET until the test lets it through, which proves reads do
 * not wait for hydration.
 */
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { nfsHostOperations } from '../../../drivers/nfs/host-ops.js';
import { HOST_RUNTIME_SCRIPT_ENV, type LazyRestoreStatus } from '../../../drivers/nfs/lazy-restore.js';
import { chunkRef } from '../../../drivers/sdk/backup-manifest.js';
import type { HostOperationError } from '../../../drivers/sdk/errors.js';
import { HostStorage } from '../../../drivers/sdk/host-config.js';
import { createInProcessHostInvoker } from '../../../drivers/sdk/host-runtime.js';
import type { HostInvoker } from '../../../drivers/sdk/types.js';
import { bundleHostRuntime } from '../../../infra/host-runtime-bundle.js';

jest.setTimeout(120_000);

const run = promisify(execFile);
const KiB = 1024;
const CHUNK = 256 * KiB;
const SIZE = 16 * CHUNK;

let root: string;
let share: string;
let host: HostInvoker;
let server: Server;
let base: string;
let source: Buffer;
const list: Array<{ index: number; sha256: string; url: string } | null> = [];
/** Chunk indexes whose GETs are answered; the others wait until released. */
const allowed = new Set<number>();
const waiting = new Map<number, Array<() => void>>();
/** Chunk indexes served with one byte flipped. */
const corrupt = new Set<number>();
const requested: number[] = [];

function allow(...indexes: number[]) {
  for (const i of indexes) {
    allowed.add(i);
    for (const go of waiting.get(i) ?? []) go();
    waiting.delete(i);
  }
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'strata-lazy-'));
  share = join(root, 'share');
  await mkdir(join(share, 'volumes'), { recursive: true });
  process.env[HOST_RUNTIME_SCRIPT_ENV] = bundleHostRuntime(join(root, 'host-main.js'));
  host = createInProcessHostInvoker({
    storage: HostStorage.fromConfig({ storageRoots: [{ path: root, kind: 'directory' }] }),
    operationSets: [nfsHostOperations],
    workDirRoot: join(root, 'hosts'),
  });
  // The snapshot: data in chunks 0, 3, 5, 9 and across 12/13; the rest zeros.
  const snap = join(root, 'snap.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', snap, String(SIZE)]);
  await qemuIo(
    snap,
    `write -P 0x11 0 ${CHUNK}`,
    `write -P 0x33 ${3 * CHUNK + 4096} 8192`,
    `write -P 0x55 ${5 * CHUNK} ${CHUNK}`,
    `write -P 0x99 ${9 * CHUNK + 65536} 65536`,
    `write -P 0xcc ${12 * CHUNK + CHUNK / 2} ${CHUNK}`,
  );
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', snap, join(root, 'snap.raw')]);
  source = await readFile(join(root, 'snap.raw'));

  server = createServer((req, res) => {
    const index = Number(/^\/chunk\/(\d+)$/.exec(req.url ?? '')?.[1]);
    requested.push(index);
    const answer = () => {
      const bytes = Buffer.from(source.subarray(index * CHUNK, (index + 1) * CHUNK));
      if (corrupt.has(index)) bytes[100] = (bytes[100] ?? 0) ^ 0xff;
      res.writeHead(200, { 'content-length': bytes.byteLength });
      res.end(bytes);
    };
    if (allowed.has(index)) answer();
    else waiting.set(index, [...(waiting.get(index) ?? []), answer]);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  for (let i = 0; i < SIZE / CHUNK; i++) {
    const ref = chunkRef(source.subarray(i * CHUNK, (i + 1) * CHUNK));
    list.push(ref ? { index: i, sha256: ref, url: `${base}/chunk/${i}` } : null);
  }
});

afterAll(async () => {
  allow(...Array.from({ length: SIZE / CHUNK }, (_, i) => i));
  for (const id of ['vol-1', 'vol-2', 'vol-3', 'vol-4', 'vol-5']) {
    await call('lazyRestoreAbort', { ...target(id) }).catch(() => undefined);
  }
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  delete process.env[HOST_RUNTIME_SCRIPT_ENV];
  await rm(root, { recursive: true, force: true });
});

const qemuIo = (file: string, ...commands: string[]) =>
  run('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), file]);
// qemu-io's output and whether it failed, without throwing.
const tryQemuIo = async (file: string, ...commands: string[]) => {
  try {
    const { stdout, stderr } = await qemuIo(file, ...commands);
    return { ok: true, output: stdout + stderr };
  } catch (error) {
    const e = error as { stdout?: string; stderr?: string };
    return { ok: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
};
const call = <T>(operation: string, args: Record<string, unknown>, jobId = 'job-1') =>
  host.run<T>('host-1', { provider: 'nfs', operation, args, jobId });
const target = (id: string) => ({ mountPath: share, volumeId: id, path: `volumes/${id}.qcow2` });
const startArgs = (id: string) => ({
  ...target(id),
  virtualSizeBytes: SIZE,
  chunkSizeBytes: CHUNK,
  chunks: list,
  count: list.length,
  stallTimeoutSeconds: 300,
});
const stateDir = (id: string) => join(share, '.strata', 'lazy', id);
const bitmap = async (id: string) => readFile(join(stateDir(id), 'bitmap')).catch(() => Buffer.alloc(0));
const daemonPid = async (id: string) => Number(await readFile(join(stateDir(id), 'daemon.pid'), 'utf8'));
const zeroChunks = () => list.filter((c) => c === null).length;

async function waitFor(what: string, check: () => Promise<boolean>) {
  // Bounded by jest's timeout, not by a clock here.
  while (!(await check())) await new Promise((r) => setTimeout(r, 50));
  return what;
}

describe('lazy restore', () => {
  afterEach(() => corrupt.clear());

  test('reads answer from a volume whose chunks have not all arrived; a bad chunk is EIO; finish flattens', async () => {
    const volume = join(share, 'volumes', 'vol-1.qcow2');
    const started = await call<LazyRestoreStatus>('lazyRestoreStart', startArgs('vol-1'));
    expect(started).toMatchObject({ state: 'hydrating', chunksTotal: 16, daemonStarted: true });
    expect(started.chunksHydrated).toBe(zeroChunks());

    // The overlay names the daemon's export; qemu-img info does not open it.
    const { stdout: infoJson } = await run('qemu-img', ['info', '--output=json', '-f', 'qcow2', volume]);
    expect(JSON.parse(infoJson)['backing-filename']).toMatch(/^nbd\+unix:\/\/\/\?socket=\//);

    // Chunk 3 comes through on its own: its read answers with the snapshot's bytes while every
    // other data chunk is still held.
    allow(3);
    const read3 = await tryQemuIo(
      volume,
      `read -P 0x33 ${3 * CHUNK + 4096} 8192`,
      `read -P 0 ${3 * CHUNK} 4096`,
    );
    expect(read3).toMatchObject({ ok: true });
    expect(read3.output).not.toMatch(/fail|error/i);
    // A zero chunk needs no fetch at all.
    expect(await tryQemuIo(volume, `read -P 0 ${1 * CHUNK} ${CHUNK}`)).toMatchObject({ ok: true });
    const midway = await call<LazyRestoreStatus>('lazyRestoreStatus', target('vol-1'));
    expect(midway.state).toBe('hydrating');
    expect(midway.chunksHydrated).toBe(zeroChunks() + 1);
    expect((await bitmap('vol-1'))[3]).toBe(1);
    expect((await bitmap('vol-1'))[0]).not.toBe(1);

    // Finish refuses while chunks are missing.
    await expect(call('lazyRestoreFinish', target('vol-1'))).rejects.toMatchObject({
      code: 'Conflict',
    } satisfies Partial<HostOperationError>);

    // Writes go to the overlay, never to the cache behind the export.
    await qemuIo(volume, `write -P 0xee ${1 * CHUNK} 65536`);
    expect(await tryQemuIo(volume, `read -P 0xee ${1 * CHUNK} 65536`)).toMatchObject({ ok: true });
    const cache = await readFile(join(stateDir('vol-1'), 'cache.raw'));
    expect(cache.subarray(CHUNK, CHUNK + 65536).every((b) => b === 0)).toBe(true);

    // A chunk that arrives damaged is an I/O error, never the damaged bytes.
    corrupt.add(9);
    allow(9);
    const bad = await tryQemuIo(volume, `read -P 0x99 ${9 * CHUNK + 65536} 65536`);
    expect(bad.output).toMatch(/Input\/output error/);
    expect(bad.output).not.toMatch(/Pattern verification failed/);
    const damaged = await call<LazyRestoreStatus>('lazyRestoreStatus', target('vol-1'));
    expect(damaged.checksumFailures).toBeGreaterThan(0);
    expect(damaged.errors.some((e) => e.index === 9 && e.code === 'ChecksumMismatch')).toBe(true);
    expect((await bitmap('vol-1'))[9]).not.toBe(1);

    // The daemon dies: status starts it again, and what was cached stays cached.
    process.kill(await daemonPid('vol-1'), 'SIGKILL');
    await waitFor('daemon gone', async () => {
      try {
        process.kill(await daemonPid('vol-1'), 0);
        return false;
      } catch {
        return true;
      }
    });
    const restarted = await call<LazyRestoreStatus>('lazyRestoreStatus', target('vol-1'), 'job-2');
    expect(restarted).toMatchObject({ daemonStarted: true, chunksHydrated: zeroChunks() + 1 });

    // Everything comes through (chunk 9 intact now): hydration completes.
    corrupt.delete(9);
    allow(...Array.from({ length: 16 }, (_, i) => i));
    await waitFor(
      'hydrated',
      async () =>
        (await call<LazyRestoreStatus>('lazyRestoreStatus', target('vol-1'), `job-${Date.now()}`)).state ===
        'hydrated',
    );
    const fetched = new Set(requested.filter((i) => Number.isInteger(i)));
    expect([...fetched].sort((a, b) => a - b)).toEqual(list.filter((c) => c !== null).map((c) => c!.index));

    const finished = await call<{ finished: boolean; virtualSizeBytes: number }>(
      'lazyRestoreFinish',
      target('vol-1'),
    );
    expect(finished).toMatchObject({ finished: true, virtualSizeBytes: SIZE });
    const { stdout: after } = await run('qemu-img', ['info', '--output=json', '-f', 'qcow2', volume]);
    expect(JSON.parse(after)['backing-filename']).toBeUndefined();
    await expect(stat(stateDir('vol-1'))).rejects.toMatchObject({ code: 'ENOENT' });

    // The flattened volume is the snapshot plus the write made during hydration.
    const expected = join(root, 'expected.qcow2');
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', join(root, 'snap.raw'), expected]);
    await qemuIo(expected, `write -P 0xee ${1 * CHUNK} 65536`);
    await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', volume, expected]);
    // And against the snapshot itself the only difference is that write.
    await expect(
      run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', volume, join(root, 'snap.raw')]),
    ).rejects.toMatchObject({ stdout: expect.stringContaining(`offset ${CHUNK}`) });

    // Finish and start again after the end report it finished and change nothing.
    await expect(call('lazyRestoreFinish', target('vol-1'), 'job-9')).resolves.toMatchObject({
      finished: false,
    });
    await expect(call('lazyRestoreStart', startArgs('vol-1'), 'job-9')).resolves.toMatchObject({
      state: 'finished',
    });
  });

  test('an untouched lazy restore equals the snapshot after finish; abort removes an unfinished one', async () => {
    allow(...Array.from({ length: 16 }, (_, i) => i));
    const volume = join(share, 'volumes', 'vol-2.qcow2');
    await call('lazyRestoreStart', startArgs('vol-2'), 'job-a');
    // Start again while it runs: the same daemon, the same volume.
    await expect(call('lazyRestoreStart', startArgs('vol-2'), 'job-b')).resolves.toMatchObject({
      daemonStarted: false,
    });
    // The wait operation returns once every chunk is in.
    await expect(call<LazyRestoreStatus>('lazyRestoreWait', target('vol-2'), 'job-w')).resolves.toMatchObject(
      {
        state: 'hydrated',
        chunksHydrated: 16,
      },
    );
    await call('lazyRestoreFinish', target('vol-2'), 'job-c');
    await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', volume, join(root, 'snap.raw')]);

    // Abort: the daemon stops, the volume that depends on it and the state go.
    await call('lazyRestoreStart', { ...startArgs('vol-3') }, 'job-d');
    const pid = await daemonPid('vol-3');
    await expect(call('lazyRestoreAbort', target('vol-3'), 'job-e')).resolves.toEqual({
      removedVolume: true,
      removedState: true,
    });
    expect(() => process.kill(pid, 0)).toThrow();
    await expect(stat(join(share, 'volumes', 'vol-3.qcow2'))).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(stat(stateDir('vol-3'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  test('the wait gives up with ChecksumMismatch when a chunk keeps arriving damaged', async () => {
    allow(...Array.from({ length: 16 }, (_, i) => i));
    corrupt.add(5);
    try {
      await call('lazyRestoreStart', startArgs('vol-5'), 'job-h');
      await expect(
        call('lazyRestoreWait', { ...target('vol-5'), maxChecksumFailures: 2 }, 'job-i'),
      ).rejects.toMatchObject({ code: 'ChecksumMismatch', message: expect.stringContaining('chunk 5') });
      const status = await call<LazyRestoreStatus>('lazyRestoreStatus', target('vol-5'), 'job-j');
      expect(status).toMatchObject({ state: 'hydrating', chunksHydrated: 15 });
      // Fresh URLs are taken only for the same chunks.
      const other = list.map((c) => (c && c.index === 0 ? { ...c, sha256: 'f'.repeat(64) } : c));
      await expect(
        call('lazyRestoreStatus', { ...target('vol-5'), chunks: other }, 'job-k'),
      ).rejects.toMatchObject({ code: 'Conflict' });
      corrupt.delete(5);
      await expect(
        call<LazyRestoreStatus>('lazyRestoreStatus', { ...target('vol-5'), chunks: list }, 'job-l'),
      ).resolves.toMatchObject({ state: 'hydrating' });
      // With chunk 5 whole again, the daemon's next pass completes the disk.
      await expect(call('lazyRestoreWait', target('vol-5'), 'job-m')).resolves.toMatchObject({
        state: 'hydrated',
      });
    } finally {
      corrupt.delete(5);
    }
  });

  test('arguments are checked: a list of the wrong length names its field', async () => {
    await expect(
      call('lazyRestoreStart', { ...startArgs('vol-4'), chunks: list.slice(1), count: undefined }, 'job-f'),
    ).rejects.toMatchObject({ message: expect.stringContaining('chunks') });
    await expect(
      call('lazyRestoreStart', { ...startArgs('vol-4'), path: '../escape.qcow2' }, 'job-g'),
    ).rejects.toMatchObject({ code: 'InvalidArguments' });
  });
});
