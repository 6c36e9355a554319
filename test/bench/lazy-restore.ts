/**
 * Lazy restore benchmark, host level (the host runtime's operations in process, the daemon as the
 * bundled host-main, real qemu-io and qemu-img):
 *
 *   npm run bench -- lazy-restore [sizeMiB=4096] [rounds=1]
 *
 * A disk of `sizeMiB` random bytes is cut into 4 MiB chunks served over HTTP from a local server
 * (not the S3 emulator: this measures the host side). Figures:
 * - `lazyRestoreFirstReadMs`: lazyRestoreStart until a 4 KiB qemu-io read in the middle of the new
 *   volume has returned the backup's bytes;
 * - `fullRestoreMs`: restoreChunks of the same list (the volume usable only at the end);
 * - `hydrateAndFlattenMs`: after the first read, lazyRestoreWait plus lazyRestoreFinish;
 * and the ratio first read / full restore.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, open, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { nfsHostOperations } from '../../drivers/nfs/host-ops';
import { HOST_RUNTIME_SCRIPT_ENV } from '../../drivers/nfs/lazy-restore';
import { chunkRef, DEFAULT_CHUNK_SIZE_BYTES } from '../../drivers/sdk/backup-manifest';
import { HostStorage } from '../../drivers/sdk/host-config';
import { createInProcessHostInvoker } from '../../drivers/sdk/host-runtime';
import { bundleHostRuntime } from '../../infra/host-runtime-bundle';
import { median, writeRandomFile } from './harness';

const exec = promisify(execFile);
const CHUNK = DEFAULT_CHUNK_SIZE_BYTES;

export async function benchLazyRestore(sizeMiB = 4096, rounds = 1): Promise<Record<string, number>> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'strata-bench-lazy-'));
  try {
    const share = path.join(root, 'share');
    await mkdir(path.join(share, 'volumes'), { recursive: true });
    process.env[HOST_RUNTIME_SCRIPT_ENV] = bundleHostRuntime(path.join(root, 'host-main.js'));
    const host = createInProcessHostInvoker({
      storage: HostStorage.fromConfig({ storageRoots: [{ path: root, kind: 'directory' }] }),
      operationSets: [nfsHostOperations],
      workDirRoot: path.join(root, 'hosts'),
    });
    const size = sizeMiB * 2 ** 20;
    const raw = path.join(root, 'disk.raw');
    await writeRandomFile(raw, size);
    const disk = await open(raw, 'r');
    const count = Math.ceil(size / CHUNK);
    const readChunk = async (i: number) => {
      const length = Math.min(CHUNK, size - i * CHUNK);
      const buf = Buffer.alloc(length);
      await disk.read(buf, 0, length, i * CHUNK);
      return buf;
    };
    const server = createServer((req, res) => {
      const i = Number(/^\/c\/(\d+)$/.exec(req.url ?? '')?.[1]);
      readChunk(i).then(
        (bytes) => {
          res.writeHead(200, { 'content-length': bytes.byteLength });
          res.end(bytes);
        },
        () => res.writeHead(500).end(),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const chunks = [];
    for (let i = 0; i < count; i++) {
      const ref = chunkRef(await readChunk(i));
      chunks.push(ref ? { index: i, sha256: ref, url: `${base}/c/${i}` } : null);
    }
    const middle = Math.floor(size / 2 / 4096) * 4096;
    const expected = createHash('sha256')
      .update((await readChunk(Math.floor(middle / CHUNK))).subarray(middle % CHUNK, (middle % CHUNK) + 4096))
      .digest('hex');
    const common = { mountPath: share, virtualSizeBytes: size, chunkSizeBytes: CHUNK, chunks, count };
    const call = (operation: string, args: Record<string, unknown>, jobId: string) =>
      host.run('host-1', { provider: 'nfs', operation, args, jobId, deadlineSeconds: 3600 });

    const first: number[] = [];
    const full: number[] = [];
    const hydrate: number[] = [];
    for (let round = 0; round < rounds; round++) {
      const id = `vol-lazy-${round}`;
      const file = path.join(share, 'volumes', `${id}.qcow2`);
      const target = { mountPath: share, volumeId: id, path: `volumes/${id}.qcow2` };
      let t0 = performance.now();
      await call('lazyRestoreStart', { ...common, volumeId: id, path: target.path }, `job-l${round}`);
      // qemu-io dumps the 4 KiB it read; its hash must be the backup's.
      const { stdout } = await exec('qemu-io', ['-f', 'qcow2', '-c', `read -v ${middle} 4096`, file], {
        maxBuffer: 1 << 20,
      });
      first.push(performance.now() - t0);
      const bytes = Buffer.from(
        stdout
          .split('\n')
          .filter((l) => /^[0-9a-f]{8}:/.test(l))
          .flatMap((l) => l.slice(11, 58).trim().split(/\s+/))
          .join(''),
        'hex',
      );
      if (createHash('sha256').update(bytes).digest('hex') !== expected) {
        throw new Error('the first read did not return the backup bytes');
      }
      t0 = performance.now();
      await call('lazyRestoreWait', target, `job-w${round}`);
      await call('lazyRestoreFinish', target, `job-f${round}`);
      hydrate.push(performance.now() - t0);
      await rm(file, { force: true });

      const fullId = `vol-full-${round}`;
      t0 = performance.now();
      await call('restoreChunks', { ...common, path: `volumes/${fullId}.qcow2` }, `job-r${round}`);
      full.push(performance.now() - t0);
      await rm(path.join(share, 'volumes', `${fullId}.qcow2`), { force: true });
    }
    server.close();
    await disk.close();
    const figures = {
      sizeMiB,
      chunks: count,
      lazyRestoreFirstReadMs: Math.round(median(first)),
      fullRestoreMs: Math.round(median(full)),
      hydrateAndFlattenMs: Math.round(median(hydrate)),
      firstReadOverFullRestore: Number((median(first) / median(full)).toFixed(4)),
    };
    console.log(JSON.stringify({ bench: 'lazy-restore', ...figures }));
    return figures;
  } finally {
    delete process.env[HOST_RUNTIME_SCRIPT_ENV];
    await rm(root, { recursive: true, force: true });
  }
}
