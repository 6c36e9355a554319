/**
 * One side of the install benchmark, run in its own process as a host runs it (so neither side
 * shares an event loop with the stack's S3 proxy): prints `{ ms, maxRssMiB }`, the milliseconds
 * the transfer took and the process's peak resident memory.
 *
 *   node --import tsx test/bench/install-child.ts <ranged|fetchImage> <url> <dir> <bytes> <sha256>
 *   node --import tsx test/bench/install-child.ts chunks <list.json> <dir> <inFlight>
 *
 * - `ranged`: the baseline, a plain parallel ranged download (8 × 16 MiB GETs, positional writes,
 *   fsync), nothing hashed, inspected or renamed; `ranged-sha256` the same with the file hashed in
 *   order on a worker thread as its ranges land (a verified download and nothing else);
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
import { Worker } from 'node:worker_threads';
import { nfsHostOperations } from '../../drivers/nfs/host-ops';
import { HostStorage } from '../../drivers/sdk/host-config';
import { createInProcessHostInvoker } from '../../drivers/sdk/host-runtime';

const MiB = 2 ** 20;

// A worker that hashes a file's ranges in order as they are reported written (read back from the
// page cache), the way a download proves its bytes without holding the event loop.
const RANGE_HASHER = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { openSync, readSync } = require('node:fs');
const fd = openSync(workerData.file, 'r');
const hash = createHash('sha256');
const done = new Map();
let at = 0;
const buffer = Buffer.allocUnsafe(4 << 20);
parentPort.on('message', ({ start, end }) => {
  done.set(start, end);
  while (done.has(at)) {
    const stop = done.get(at);
    done.delete(at);
    for (let p = at; p < stop; ) {
      const n = readSync(fd, buffer, 0, Math.min(buffer.length, stop - p), p);
      hash.update(buffer.subarray(0, n));
      p += n;
    }
    at = stop;
  }
  if (at >= workerData.size) parentPort.postMessage(hash.digest('hex'));
});
`;

/**
 * The baseline: `streams` ranged GETs of `partBytes` at once, each written at its offset. With
 * `verify`, a worker thread also hashes the file in order as ranges land (and the download ends
 * when the hash does): a verified download with nothing else.
 */
export async function rangedDownload(
  url: string,
  file: string,
  size: number,
  streams = 8,
  partBytes = 16 * MiB,
  verify = false,
) {
  const fh = await open(file, 'w');
  const hasher = verify ? new Worker(RANGE_HASHER, { eval: true, workerData: { file, size } }) : undefined;
  const hashed = hasher
    ? new Promise<string>((resolve, reject) => {
        hasher.once('message', resolve);
        hasher.once('error', reject);
      })
    : undefined;
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
        hasher?.postMessage({ start, end: end + 1 });
      }
    };
    await Promise.all(Array.from({ length: streams }, worker));
    agent.destroy();
    await fh.sync();
    await hashed;
  } finally {
    await hasher?.terminate();
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
  if (mode === 'ranged' || mode === 'ranged-sha256') {
    const file = path.join(dir, 'ranged-baseline.qcow2');
    await rangedDownload(url, file, size, 8, 16 * MiB, mode === 'ranged-sha256');
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
