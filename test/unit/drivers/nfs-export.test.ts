import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { NfsDriver } from '../../../drivers/nfs/driver.js';
import type {
  NfsExportCleanupResult,
  NfsExportPrepareResult,
  NfsExportUploadResult,
} from '../../../drivers/nfs/export-ops.js';
import { nfsHostOperations } from '../../../drivers/nfs/host-ops.js';
import { HostStorage } from '../../../drivers/sdk/host-config.js';
import { createInProcessHostInvoker } from '../../../drivers/sdk/host-runtime.js';
import { createTestDriverContext } from '../../../drivers/sdk/testing.js';
import type { DataStoreInfo, HostInvoker, Logger, UploadPartUrl } from '../../../drivers/sdk/types.js';
import { localS3ClientConfig, type S3Emulator, startS3Emulator } from '../../../infra/local/s3-emulator.js';

jest.setTimeout(60_000);

const run = promisify(execFile);
const MiB = 1024 * 1024;
const PART = 5 * MiB;
const BUCKET = 'staging';

// A proxy in front of s3rver that records what each part PUT looked like and can fail some.
interface Proxy {
  endpoint: string;
  requests: { partNumber: number; contentLength?: string; transferEncoding?: string; status: number }[];
  /** partNumber → how many more times to answer 500. */
  failures: Map<number, number>;
  close(): Promise<void>;
}

let root: string;
let share: string;
let outside: string;
let emulator: S3Emulator;
let s3: S3Client;
let proxy: Proxy;
let proxied: S3Client;
let host: HostInvoker;
let logs: string[];

async function startProxy(target: string): Promise<Proxy> {
  const upstream = new URL(target);
  const requests: Proxy['requests'] = [];
  const failures = new Map<number, number>();
  const server: Server = createServer((req, res) => {
    const partNumber = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('partNumber') ?? 0);
    const record = {
      partNumber,
      contentLength: req.headers['content-length'],
      transferEncoding: req.headers['transfer-encoding'],
      status: 0,
    };
    requests.push(record);
    const left = failures.get(partNumber) ?? 0;
    if (left > 0) {
      failures.set(partNumber, left - 1);
      record.status = 500;
      req.resume();
      req.on('end', () => res.writeHead(500).end('<Error><Code>InternalError</Code></Error>'));
      return;
    }
    const forward = request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: upstream.host },
      },
      (answer) => {
        record.status = answer.statusCode ?? 0;
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on('error', () => res.writeHead(502).end());
    req.pipe(forward);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    failures,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'strata-nfs-export-'));
  emulator = await startS3Emulator({ dir: join(root, 's3'), buckets: [BUCKET] });
  s3 = new S3Client(localS3ClientConfig(emulator.endpoint));
  proxy = await startProxy(emulator.endpoint);
  proxied = new S3Client(localS3ClientConfig(proxy.endpoint));
});
afterAll(async () => {
  s3?.destroy();
  proxied?.destroy();
  await proxy?.close();
  await emulator?.stop();
  await rm(root, { recursive: true, force: true });
});

beforeEach(async () => {
  const dir = await mkdtemp(join(root, 'case-'));
  share = join(dir, 'share');
  outside = join(dir, 'outside');
  await Promise.all([mkdir(join(share, 'templates'), { recursive: true }), mkdir(outside)]);
  await mkdir(join(share, 'volumes'));
  logs = [];
  const capture = (message: string, fields?: Record<string, unknown>) =>
    logs.push(`${message} ${JSON.stringify(fields ?? {})}`);
  const logger: Logger = { debug: capture, info: capture, warn: capture, error: capture };
  host = createInProcessHostInvoker({
    // The test's temp dir is the one storage root its host may touch (as /etc/strata/host.json says on a host).
    storage: HostStorage.fromConfig({ storageRoots: [{ path: dir, kind: 'directory' }] }),
    operationSets: [nfsHostOperations],
    workDirRoot: join(dir, 'hosts'),
    logger,
  });
  proxy.requests.length = 0;
  proxy.failures.clear();
  // A linked clone whose data lives in both layers: 8 MiB in the template, 6 MiB more in the clone.
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', join(share, 'templates/t.qcow2'), '32M']);
  await qemuIo(join(share, 'templates/t.qcow2'), 'write -P 0xaa 0 8M');
  await run('qemu-img', [
    'create',
    '-q',
    '-f',
    'qcow2',
    '-F',
    'qcow2',
    '-b',
    '../templates/t.qcow2',
    join(share, 'volumes/v.qcow2'),
  ]);
  await qemuIo(join(share, 'volumes/v.qcow2'), 'write -P 0xbb 8M 6M', 'write -P 0xcc 20M 1M');
});

const qemuIo = (file: string, ...commands: string[]) =>
  run('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), file]);
const sha256 = async (file: string) =>
  createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
const call = <T>(args: Record<string, unknown>, jobId = 'job-1') =>
  host.run<T>('host-1', { provider: 'nfs', operation: 'exportImage', args, jobId });
const failure = (promise: Promise<unknown>) =>
  promise.then(
    () => ({ code: 'resolved', message: '' }),
    (e: { code?: string; message?: string }) => ({ code: String(e.code), message: String(e.message) }),
  );
const prepare = (extra: Record<string, unknown> = {}, jobId?: string) =>
  call<NfsExportPrepareResult>(
    { phase: 'prepare', mountPath: share, path: 'volumes/v.qcow2', format: 'qcow2', ...extra },
    jobId,
  );

// What the control plane does: create the multipart upload and presign one UploadPart per 5 MiB.
async function createUpload(key: string, totalBytes: number, client = s3) {
  const { UploadId } = await s3.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: key }));
  const parts: UploadPartUrl[] = [];
  for (let offset = 0, partNumber = 1; offset < totalBytes; offset += PART, partNumber++) {
    const sizeBytes = Math.min(PART, totalBytes - offset);
    const url = await getSignedUrl(
      client,
      new UploadPartCommand({ Bucket: BUCKET, Key: key, UploadId, PartNumber: partNumber }),
      { expiresIn: 600 },
    );
    parts.push({ partNumber, url, offset, sizeBytes });
  }
  return { uploadId: UploadId!, parts };
}
async function completeAndDownload(key: string, uploadId: string, parts: NfsExportUploadResult['parts']) {
  await s3.send(
    new CompleteMultipartUploadCommand({
      Bucket: BUCKET,
      Key: key,
      UploadId: uploadId,
      MultipartUpload: {
        Parts: parts.map(({ partNumber, etag }) => ({ PartNumber: partNumber, ETag: etag })),
      },
    }),
  );
  const object = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  const file = join(outside, `${key.replaceAll('/', '_')}.qcow2`);
  await writeFile(file, await object.Body!.transformToByteArray());
  return file;
}
const identical = async (a: string, b: string) => {
  try {
    await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', a, b]);
    return true;
  } catch {
    return false;
  }
};

describe('exportImage', () => {
  it('flattens a linked clone, uploads it in parts and the stored object is the same disk', async () => {
    const prep = await prepare();

    expect(prep).toMatchObject({
      phase: 'prepare',
      tempPath: 'volumes/.export-job-1.v.qcow2',
      virtualSizeBytes: 32 * MiB,
      format: 'qcow2',
    });
    const temp = join(share, prep.tempPath);
    expect(prep.sizeBytes).toBe((await stat(temp)).size);
    expect(prep.sizeBytes).toBeGreaterThan(2 * PART);
    expect(prep.sha256).toBe(await sha256(temp));

    const { uploadId, parts } = await createUpload('exports/v.qcow2', prep.sizeBytes);
    expect(parts.length).toBeGreaterThanOrEqual(3);
    const uploaded = await call<NfsExportUploadResult>({
      phase: 'upload',
      mountPath: share,
      tempPath: prep.tempPath,
      totalBytes: prep.sizeBytes,
      parts,
    });

    expect(uploaded.phase).toBe('upload');
    expect(uploaded.bytesUploaded).toBe(prep.sizeBytes);
    expect(uploaded.parts.map((p) => p.partNumber)).toEqual(parts.map((p) => p.partNumber));
    for (const part of uploaded.parts) expect(part.etag).toMatch(/^"?[0-9a-f]{32}"?$/);

    const downloaded = await completeAndDownload('exports/v.qcow2', uploadId, uploaded.parts);
    expect(await sha256(downloaded)).toBe(prep.sha256);
    expect(await identical(join(share, 'volumes/v.qcow2'), downloaded)).toBe(true);
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', downloaded])).stdout) as Record<
      string,
      unknown
    >;
    expect(info['backing-filename']).toBeUndefined();
    expect(info['virtual-size']).toBe(32 * MiB);
    // Presigned query strings are credentials: none may reach a log line.
    expect(logs.join('\n')).not.toMatch(/X-Amz-Signature|X-Amz-Credential/);

    await expect(
      call<NfsExportCleanupResult>({ phase: 'cleanup', mountPath: share, tempPath: prep.tempPath }),
    ).resolves.toEqual({ phase: 'cleanup', deleted: true });
    await expect(stat(temp)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(
      call<NfsExportCleanupResult>({ phase: 'cleanup', mountPath: share, tempPath: prep.tempPath }),
    ).resolves.toEqual({ phase: 'cleanup', deleted: false });
    // The source and its template are untouched, and no partial file is left behind.
    expect((await readdir(join(share, 'volumes'))).sort()).toEqual(['v.qcow2']);
    expect(await identical(join(share, 'volumes/v.qcow2'), downloaded)).toBe(true);
  });

  it('retries a part that answers 500 once, sending Content-Length and never chunked bodies', async () => {
    const prep = await prepare();
    const { uploadId, parts } = await createUpload('exports/retry.qcow2', prep.sizeBytes, proxied);
    proxy.failures.set(2, 1);

    const uploaded = await call<NfsExportUploadResult>({
      phase: 'upload',
      mountPath: share,
      tempPath: prep.tempPath,
      totalBytes: prep.sizeBytes,
      parts,
    });

    const part2 = proxy.requests.filter((r) => r.partNumber === 2);
    expect(part2.map((r) => r.status)).toEqual([500, 200]);
    expect(proxy.requests).toHaveLength(parts.length + 1);
    for (const r of proxy.requests) {
      const part = parts.find((p) => p.partNumber === r.partNumber)!;
      expect(r.contentLength).toBe(String(part.sizeBytes));
      expect(r.transferEncoding).toBeUndefined();
    }
    expect(logs.some((l) => l.startsWith('part upload failed; retrying'))).toBe(true);
    expect(logs.join('\n')).not.toMatch(/X-Amz-Signature|X-Amz-Credential/);
    const downloaded = await completeAndDownload('exports/retry.qcow2', uploadId, uploaded.parts);
    expect(await sha256(downloaded)).toBe(prep.sha256);
  });

  it('gives up after 3 retries with a retryable Unavailable error naming no query string', async () => {
    const prep = await prepare();
    const { parts } = await createUpload('exports/down.qcow2', prep.sizeBytes, proxied);
    proxy.failures.set(1, 99);

    const outcome = await failure(
      call({ phase: 'upload', mountPath: share, tempPath: prep.tempPath, totalBytes: prep.sizeBytes, parts }),
    );

    expect(outcome.code).toBe('Unavailable');
    expect(outcome.message).not.toContain('X-Amz');
    expect(proxy.requests.filter((r) => r.partNumber === 1)).toHaveLength(4);
  });

  it('rebuilds the temporary on a repeated prepare and names it after the job', async () => {
    const first = await prepare();
    await qemuIo(join(share, 'volumes/v.qcow2'), 'write -P 0xdd 0 1M');

    const again = await prepare();
    const other = await prepare({}, 'job-2');

    expect(again.tempPath).toBe(first.tempPath);
    expect(again.sha256).not.toBe(first.sha256);
    expect(again.sha256).toBe(await sha256(join(share, again.tempPath)));
    expect(other.tempPath).toBe('volumes/.export-job-2.v.qcow2');
    expect(await identical(join(share, 'volumes/v.qcow2'), join(share, other.tempPath))).toBe(true);
  });

  it('refuses an upload whose totalBytes is not the temporary length', async () => {
    const prep = await prepare();
    const { parts } = await createUpload('exports/short.qcow2', prep.sizeBytes - 1);

    await expect(
      failure(
        call({
          phase: 'upload',
          mountPath: share,
          tempPath: prep.tempPath,
          totalBytes: prep.sizeBytes - 1,
          parts,
        }),
      ),
    ).resolves.toMatchObject({ code: 'Conflict' });
  });

  it.each([
    ['a parent escape', { path: '../outside/v.qcow2' }],
    ['an absolute path', { path: '/etc/passwd' }],
    ['a relative mount path', { mountPath: 'share' }],
    ['an unknown format', { format: 'vmdk' }],
  ])('refuses to prepare %s as invalid arguments', async (_label, extra) => {
    await expect(failure(prepare(extra))).resolves.toMatchObject({ code: 'InvalidArguments' });
    expect(await readdir(outside)).toEqual([]);
  });

  it('refuses to export through a symlinked directory or from a chain leaving the share', async () => {
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', join(outside, 'base.qcow2'), '1M']);
    await run('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-F',
      'qcow2',
      '-b',
      join(outside, 'base.qcow2'),
      join(share, 'volumes/escape.qcow2'),
    ]);
    await symlink(outside, join(share, 'linked'));

    await expect(failure(prepare({ path: 'volumes/escape.qcow2' }))).resolves.toMatchObject({
      code: 'Conflict',
    });
    await expect(failure(prepare({ path: 'linked/base.qcow2' }))).resolves.toMatchObject({
      code: 'InvalidInput',
    });
    expect((await readdir(outside)).sort()).toEqual(['base.qcow2']);
    expect((await readdir(join(share, 'volumes'))).sort()).toEqual(['escape.qcow2', 'v.qcow2']);
  });

  it.each([
    ['a volume instead of an export temporary', 'volumes/v.qcow2'],
    ['a parent escape', '../outside/.export-job-1.v.qcow2'],
    ['an absolute path', '/tmp/.export-job-1.v.qcow2'],
  ])('refuses to upload or clean up %s', async (_label, tempPath) => {
    const parts = [{ partNumber: 1, url: `${emulator.endpoint}/${BUCKET}/x`, offset: 0, sizeBytes: 1 }];
    await expect(
      failure(call({ phase: 'upload', mountPath: share, tempPath, totalBytes: 1, parts })),
    ).resolves.toMatchObject({ code: 'InvalidArguments' });
    await expect(failure(call({ phase: 'cleanup', mountPath: share, tempPath }))).resolves.toMatchObject({
      code: 'InvalidArguments',
    });
    expect((await readdir(join(share, 'volumes'))).sort()).toEqual(['v.qcow2']);
  });

  it.each([
    ['a file URL', 'file:///etc/passwd'],
    ['an ftp URL', 'ftp://127.0.0.1/x'],
    ['a URL with credentials', 'http://user:pw@127.0.0.1/x'],
    ['a shell-looking string', '$(touch /tmp/pwned)'],
  ])('refuses %s as a part URL before any byte moves', async (_label, url) => {
    const prep = await prepare();
    const { parts } = await createUpload('exports/bad.qcow2', prep.sizeBytes, proxied);
    parts[1] = { ...parts[1]!, url };

    await expect(
      failure(
        call({
          phase: 'upload',
          mountPath: share,
          tempPath: prep.tempPath,
          totalBytes: prep.sizeBytes,
          parts,
        }),
      ),
    ).resolves.toMatchObject({ code: 'InvalidArguments' });
    expect(proxy.requests).toHaveLength(0);
  });

  it.each([
    ['overlapping parts', (p: UploadPartUrl[]) => [p[0]!, { ...p[1]!, offset: p[1]!.offset - 1 }]],
    ['a duplicated part number', (p: UploadPartUrl[]) => [p[0]!, { ...p[1]!, partNumber: 1 }]],
    ['a part beyond totalBytes', (p: UploadPartUrl[]) => [{ ...p[0]!, sizeBytes: p[0]!.sizeBytes * 100 }]],
  ])('refuses %s', async (_label, mangle) => {
    const prep = await prepare();
    const { parts } = await createUpload('exports/mangled.qcow2', prep.sizeBytes, proxied);

    await expect(
      failure(
        call({
          phase: 'upload',
          mountPath: share,
          tempPath: prep.tempPath,
          totalBytes: prep.sizeBytes,
          parts: mangle(parts),
        }),
      ),
    ).resolves.toMatchObject({ code: 'InvalidArguments' });
    expect(proxy.requests).toHaveLength(0);
  });
});

describe('NfsDriver.exportAsync', () => {
  const store = (): DataStoreInfo => ({
    id: 'pool-1',
    name: 'pool-1',
    provider: 'nfs',
    role: 'primary',
    scope: { type: 'cluster', zoneId: 'z1', clusterId: 'c1' },
    details: { server: '10.0.0.5', export: '/srv/nfs', mountPath: share },
    capacityBytes: 1 << 30,
  });

  it('runs the three phases on the host and returns typed results', async () => {
    const driver = new NfsDriver();
    const ctx = createTestDriverContext({ host, jobId: 'job-9' });
    const base = { store: store(), object: { kind: 'volume' as const, id: 'v' }, hostId: 'host-1', ctx };

    const prep = await driver.exportAsync({ ...base, phase: 'prepare' });
    expect(prep.tempPath).toBe('volumes/.export-job-9.v.qcow2');

    const { uploadId, parts } = await createUpload('exports/driver.qcow2', prep.sizeBytes);
    const uploaded = await driver.exportAsync({
      ...base,
      phase: 'upload',
      tempPath: prep.tempPath,
      totalBytes: prep.sizeBytes,
      parts,
    });
    const downloaded = await completeAndDownload('exports/driver.qcow2', uploadId, uploaded.parts);
    expect(await sha256(downloaded)).toBe(prep.sha256);

    const cleaned = await driver.exportAsync({ ...base, phase: 'cleanup', tempPath: prep.tempPath });
    expect(cleaned.deleted).toBe(true);
  });

  it('refuses a missing host, a snapshot and a bad tempPath before reaching the host', async () => {
    const driver = new NfsDriver();
    const ctx = createTestDriverContext({ host });
    const base = { store: store(), object: { kind: 'volume' as const, id: 'v' }, hostId: 'host-1', ctx };

    await expect(driver.exportAsync({ ...base, hostId: undefined, phase: 'prepare' })).rejects.toMatchObject({
      code: 'InvalidInput',
    });
    await expect(
      driver.exportAsync({ ...base, object: { kind: 'snapshot', id: 's1' }, phase: 'prepare' }),
    ).rejects.toMatchObject({ code: 'Unsupported' });
    await expect(
      driver.exportAsync({ ...base, phase: 'cleanup', tempPath: '../outside/.export-x.qcow2' }),
    ).rejects.toMatchObject({ code: 'InvalidInput' });
  });
});
