/**
 * Test fixture: real disk images made with qemu-img/qemu-io, and a real HTTP server on 127.0.0.1
 * that serves them (plus misbehaving routes) the way a presigned image-store URL would.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

export const run = promisify(execFile);
export const MiB = 1024 * 1024;

/** Images written to `dir`: a 2 MiB raw disk with two patterned extents, and the same as qcow2. */
export interface TestImages {
  raw: string;
  qcow2: string;
  /** A qcow2 whose header names a backing file: must never be installed. */
  backed: string;
  rawSha256: string;
  qcow2Sha256: string;
  virtualSizeBytes: number;
}

export async function makeTestImages(dir: string): Promise<TestImages> {
  const raw = join(dir, 'image.raw');
  const qcow2 = join(dir, 'image.qcow2');
  const backed = join(dir, 'backed.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'raw', raw, String(2 * MiB)]);
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 64k', '-c', 'write -P 0x11 1M 128k', raw]);
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/hostname', '-F', 'raw', backed]);
  return {
    raw,
    qcow2,
    backed,
    rawSha256: await sha256(raw),
    qcow2Sha256: await sha256(qcow2),
    virtualSizeBytes: 2 * MiB,
  };
}

export async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

/** A running server; `hits` counts requests per path. */
export interface ImageServer {
  url(path: string): string;
  hits: Map<string, number>;
  close(): Promise<void>;
}

/**
 * Serves `/files/<name>` from `files`, and:
 * - `/short/<name>`: announces the full length, sends half, then destroys the socket;
 * - `/stall/<name>`: sends the headers and 1 KiB, then nothing;
 * - `/status/<code>`: answers that status.
 */
export async function startImageServer(files: Record<string, string>): Promise<ImageServer> {
  const hits = new Map<string, number>();
  const stalled = new Set<import('node:http').ServerResponse>();
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    hits.set(path, (hits.get(path) ?? 0) + 1);
    const [, kind, name] = path.split('/');
    const file = name ? files[name] : undefined;
    if (kind === 'status') {
      res.writeHead(Number(name)).end();
      return;
    }
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    readFile(file).then(
      (body) => {
        res.writeHead(200, { 'content-length': body.length, 'content-type': 'application/octet-stream' });
        if (kind === 'files') res.end(body);
        else if (kind === 'short') {
          res.write(body.subarray(0, Math.floor(body.length / 2)), () => res.destroy());
        } else if (kind === 'stall') {
          stalled.add(res);
          res.write(body.subarray(0, 1024));
        } else res.destroy();
      },
      () => res.writeHead(500).end(),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: (path) => `http://127.0.0.1:${port}${path}`,
    hits,
    close: () =>
      new Promise<void>((resolve) => {
        for (const res of stalled) res.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
