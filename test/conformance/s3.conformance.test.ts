import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { S3_CLIENT_SERVICE } from '../../drivers/s3/client.js';
import { createS3Provider } from '../../drivers/s3/provider.js';
import { describeDriverConformance } from '../../drivers/sdk/conformance.js';
import { createTestDriverContext } from '../../drivers/sdk/testing.js';
import type { DataStoreInfo } from '../../drivers/sdk/types.js';
import { localS3ClientConfig, startS3Emulator } from '../../infra/local/s3-emulator.js';

// A real s3rver on a temp dir, two buckets: the second store exercises bucket-to-bucket copies.
describeDriverConformance('s3', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-s3-conf-'));
  const emulator = await startS3Emulator({ dir, buckets: ['conf-images', 'conf-backups'] });
  const client = new S3Client(localS3ClientConfig(emulator.endpoint));
  const store = (id: string, details: Record<string, string>): DataStoreInfo => ({
    id,
    name: id,
    provider: 's3',
    role: 'image',
    scope: { type: 'zone', zoneId: 'z1' },
    details,
    capacityBytes: 0,
  });
  const keyOf = (s: DataStoreInfo, path: string) => `${s.details.prefix ?? ''}${path}`;

  return {
    provider: createS3Provider(),
    store: store('img-a', { bucket: 'conf-images', prefix: 'strata/zone-1' }),
    secondStore: store('img-b', { bucket: 'conf-backups' }),
    ctx: createTestDriverContext({ services: { [S3_CLIENT_SERVICE]: () => client } }),
    hosts: [{ id: 'host-1', name: 'host-1', zoneId: 'z1', clusterId: 'c1', hypervisor: 'kvm' }],
    async readObject(s, path) {
      const out = await client.send(new GetObjectCommand({ Bucket: s.details.bucket, Key: keyOf(s, path) }));
      return Buffer.from(await out.Body!.transformToByteArray());
    },
    async mutateObject(s, path) {
      const Key = keyOf(s, path);
      const head = await client.send(new HeadObjectCommand({ Bucket: s.details.bucket, Key }));
      const body = Buffer.alloc(head.ContentLength ?? 0, 0x5a);
      await client.send(new PutObjectCommand({ Bucket: s.details.bucket, Key, Body: body }));
    },
    // s3rver 3.7 answers AbortMultipartUpload (DELETE ?uploadId) with 405 MethodNotAllowed and
    // ListMultipartUploads (GET ?uploads) with 501 NotImplemented; the driver implements both for
    // real S3 (unit-tested with aws-sdk-client-mock), so only these calls are skipped here.
    imageStoreGaps: ['abortUpload', 'listUploads'],
    async teardown() {
      client.destroy();
      await emulator.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
});
