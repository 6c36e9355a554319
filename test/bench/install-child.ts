/**
 * One side of the install benchmark, run in its own process as a host runs it (so neither side
 * shares an event loop with the stack's S3 proxy): prints `{ ms, maxRssMiB }`, the milliseconds
 * the transfer took and the process's peak resident memory.
 *
 *   node --import tsx test/bench/install-child.ts <ranged|fetchImage> <url> <dir> <bytes> <sha256>
 *   node --import tsx test/bench/install-child.ts chunks <list.json> <dir> <inFlight>
 *
 * - `ranged`: the baseline, a plain parallel ranged download (8 × 16 MiB GETs, positional writes,
 *   fsync), nothing hashed, inspected or renamed;
 * - `fetchImage`: the nfs host operation as a host runs it (ranged GETs pinned to the ETag, sha256
 *   in order, header inspection, rename), on a share at `dir`;
 * - `chunks`: the restore baseline, a plain download of a list of chunks (`[{ url, offset, length }]`,
 *   `inFlight` GETs at once), each written at its offset into one raw file; nothing hashed. With a
 *   fifth argument `sha256`, each chunk is also hashed (sha256 of the whole body on the event loop,
 *   as a plain tool would) before it is written: the least a restore that verifies its bytes does.
 */
import { createHash } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { nfsHostOperations } from '../../drivers/nfs/host-ops';
import { HostStorage } from '../../drivers/sdk/host-config';
import { createInProcessHostInvoker } from '../../drivers/sdk/host-runtime';

const MiB = 2 ** 20;

/** The baseline: `streams` ranged GETs of `partBytes` at once, each written at its offset. */
export async function rangedDownload(
  url: string,
  file: string,
  size: number,
  streams = 8,
  partBytes = 16 * MiB,
) {
  const fh = await open(file, 'w');
  try {
    await fh.truncate(size);
    let next = 0;
    const agent = new http.Agent({ keepAlive: true, maxSockets: streams });
    const worker = async () => {
      for (;;) {
        const start = next;
        next += partBytes;
        if (start >= size) return;
        const end = Math.min(start + partBytes, size) - 1;
        const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
          http.get(url, { agent, headers: { range: `bytes=${start}-${end}` } }, resolve).on('error', reject),
        );
        if (res.statusCode !== 206) throw new Error(`baseline GET: ${res.statusCode}`);
        let at = start;
        for await (const chunk of res as AsyncIterable<Buffer>) {
          await fh.write(chunk, 0, chunk.byteLength, at);
          at += chunk.byteLength;
        }
      }
    };
    await Promise.all(Array.from({ length: streams }, worker));
    agent.destroy();
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** The restore baseline: each chunk GET whole, `inFlight` at once, written at its offset. */
async function chunksDownload(
  list: Array<{ url: string; offset: number; length: number }>,
  file: string,
  inFlight: number,
  hash: boolean,
) {
  const fh = await open(file, 'w');
  try {
    const agent = new http.Agent({ keepAlive: true, maxSockets: inFlight });
    let next = 0;
    const worker = async () => {
      while (next < list.length) {
        const { url, offset, length } = list[next++]!;
        const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
          http.get(url, { agent }, resolve).on('error', reject),
        );
        if (res.statusCode !== 200) throw new Error(`baseline GET: ${res.statusCode}`);
        const body = Buffer.allocUnsafe(length);
        let at = 0;
        for await (const chunk of res as AsyncIterable<Buffer>) {
          chunk.copy(body, at);
          at += chunk.byteLength;
        }
        if (hash) createHash('sha256').update(body.subarray(0, at)).digest('hex');
        await fh.write(body, 0, at, offset);
      }
    };
    await Promise.all(Array.from({ length: inFlight }, worker));
    agent.destroy();
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function main(): Promise<void> {
  const [mode, url, dir, bytes, sha256] = process.argv.slice(2);
  if (mode === 'chunks' && url && dir && bytes) {
    const list = JSON.parse(await readFile(url, 'utf8')) as Array<{
      url: string;
      offset: number;
      length: number;
    }>;
    const t0 = performance.now();
    await chunksDownload(list, path.join(dir, 'chunks-baseline.raw'), Number(bytes), sha256 === 'sha256');
    const ms = Math.round(performance.now() - t0);
    console.log(JSON.stringify({ ms, maxRssMiB: Math.round(process.resourceUsage().maxRSS / 1024) }));
    return;
  }
  if (!mode || !url || !dir || !bytes || !sha256)
    throw new Error('usage: <mode> <url> <dir> <bytes> <sha256>');
  const size = Number(bytes);
  const t0 = performance.now();
  if (mode === 'ranged') {
    await rangedDownload(url, path.join(dir, 'ranged-baseline.qcow2'), size);
  } else if (mode === 'fetchImage') {
    const host = createInProcessHostInvoker({
      storage: HostStorage.fromConfig({ storageRoots: [{ path: dir, kind: 'directory' }] }),
      operationSets: [nfsHostOperations],
      workDirRoot: path.join(dir, '.bench-host'),
    });
    await host.run('host-bench', {
      provider: 'nfs',
      operation: 'fetchImage',
      jobId: `bench-${process.pid}`,
      args: {
        mountPath: dir,
        path: 'templates/bench.qcow2',
        url,
        sourceFormat: 'qcow2',
        expectedSha256: sha256,
        sizeBytes: size,
      },
    });
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  const ms = Math.round(performance.now() - t0);
  // Peak resident memory of the whole process (KiB on Linux), to show it does not grow with the object.
  console.log(JSON.stringify({ ms, maxRssMiB: Math.round(process.resourceUsage().maxRSS / 1024) }));
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e);
    process.exit(1);
  },
);
