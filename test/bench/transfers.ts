/**
 * Plain transfers of a set of 4 MiB pieces, measured alone on the embedded stack, to put Strata's
 * backup and restore times beside what the emulators themselves allow:
 *
 * - `plainUpMs` / `plainDownMs`: presigned PUTs / GETs straight to s3rver, 4 in flight (the
 *   benches' baseline: the same bytes, no authorization, no checksum);
 * - `proxyPostMs`: the path a backup's chunks take: one presigned POST policy from the image store
 *   driver, each piece POSTed with its SHA-256 by the host's own `postChunk`, 4 in flight, through
 *   the stack's S3 endpoint (the authorizing proxy, which spools and hashes each body as S3 does);
 * - `proxyPromoteMs`: then what promotion does with each: a HEAD with its checksum and a
 *   server-side copy, 16 in flight, through the proxy;
 * - `proxyGetMs`: presigned GETs through the proxy, 8 in flight (a restore's fetches, no hashing,
 *   no writing).
 *
 * Hashes are computed before the clocks start; nothing here runs a flow.
 */
import { createHash } from 'node:crypto';
import {
  CopyObjectCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { postChunk } from '../../drivers/nfs/chunk-transfer';
import { signPostPolicy } from '../../drivers/s3/presigned-post';
import { forEachLimit } from '../../functions/core/pool';
import type { EmbeddedStack } from '../../infra/local/embedded-stack';
import { localS3ClientConfig } from '../../infra/local/s3-emulator';

export interface Transfers {
  plainUpMs: number;
  plainDownMs: number;
  proxyPostMs: number;
  proxyPromoteMs: number;
  proxyGetMs: number;
}

const CHUNK = 4 * 2 ** 20;

/** Times the transfers of `count` pieces, each read by `piece(i)`; removes every object it made. */
export async function measureTransfers(
  stack: EmbeddedStack,
  count: number,
  piece: (i: number) => Promise<Buffer>,
  tag: string,
): Promise<Transfers> {
  const indexes = Array.from({ length: count }, (_, i) => i);
  const hashes: string[] = [];
  for (const i of indexes)
    hashes.push(
      createHash('sha256')
        .update(await piece(i))
        .digest('hex'),
    );
  const direct = new S3Client(localS3ClientConfig(stack.endpoints.s3));
  // The role that signs a backup's POST policy and promotes its chunks.
  const proxy = new S3Client({
    ...localS3ClientConfig(stack.endpoints.s3Proxy),
    credentials: stack.credentialsFor('StoreTasksRole'),
  });
  const bucket = stack.imageBucket;
  const plainKey = (i: number) => `bench-transfers/${tag}/${i}`;
  const staging = `images/backups/plans/bench-${tag}/staging/`;
  const promoted = (sha: string) => `images/backups/plans/bench-${tag}/promoted/${sha}`;
  const timed = async (f: () => Promise<void>) => {
    const t0 = performance.now();
    await f();
    return performance.now() - t0;
  };
  try {
    const plainUpMs = await timed(() =>
      forEachLimit(indexes, 4, async (i) => {
        const body = await piece(i);
        const url = await getSignedUrl(direct, new PutObjectCommand({ Bucket: bucket, Key: plainKey(i) }));
        const res = await fetch(url, { method: 'PUT', body, headers: { 'content-length': String(CHUNK) } });
        await res.body?.cancel();
        if (res.status !== 200) throw new Error(`plain PUT ${i}: ${res.status}`);
      }),
    );
    const plainDownMs = await timed(() =>
      forEachLimit(indexes, 4, async (i) => {
        const url = await getSignedUrl(direct, new GetObjectCommand({ Bucket: bucket, Key: plainKey(i) }));
        const res = await fetch(url);
        if (res.status !== 200) throw new Error(`plain GET ${i}: ${res.status}`);
        await res.arrayBuffer();
      }),
    );
    const post = await signPostPolicy({
      client: proxy,
      bucket,
      keyPrefix: staging,
      maxBytes: CHUNK,
      expiresSeconds: 3600,
    });
    const signal = new AbortController().signal;
    const proxyPostMs = await timed(() =>
      forEachLimit(indexes, 4, async (i) => {
        await postChunk({ ...post, keyPrefix: staging }, await piece(i), hashes[i]!, i, 60_000, signal);
      }),
    );
    const proxyPromoteMs = await timed(() =>
      forEachLimit(indexes, 16, async (i) => {
        const from = `${staging}${hashes[i]}`;
        const head = await proxy.send(
          new HeadObjectCommand({ Bucket: bucket, Key: from, ChecksumMode: 'ENABLED' }),
        );
        if (head.ContentLength !== CHUNK) throw new Error(`staged piece ${i} is ${head.ContentLength} bytes`);
        await proxy.send(
          new CopyObjectCommand({
            Bucket: bucket,
            Key: promoted(hashes[i]!),
            CopySource: `${bucket}/${from}`,
          }),
        );
      }),
    );
    const proxyGetMs = await timed(() =>
      forEachLimit(indexes, 8, async (i) => {
        const url = await getSignedUrl(
          proxy,
          new GetObjectCommand({ Bucket: bucket, Key: promoted(hashes[i]!) }),
        );
        const res = await fetch(url);
        if (res.status !== 200) throw new Error(`proxy GET ${i}: ${res.status}`);
        await res.arrayBuffer();
      }),
    );
    return { plainUpMs, plainDownMs, proxyPostMs, proxyPromoteMs, proxyGetMs };
  } finally {
    await forEachLimit(indexes, 8, async (i) => {
      for (const Key of [plainKey(i), `${staging}${hashes[i]}`, promoted(hashes[i]!)])
        await direct.send(new DeleteObjectCommand({ Bucket: bucket, Key }));
    });
    direct.destroy();
    proxy.destroy();
  }
}
