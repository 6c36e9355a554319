import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  HeadObjectCommand,
  S3Client,
  UploadPartCopyCommand,
} from '@aws-sdk/client-s3';
import { mockClient } from 'aws-sdk-client-mock';
import { S3_CLIENT_SERVICE } from '../../../drivers/s3/client.js';
import { normalizePrefix, S3DetailsSchema } from '../../../drivers/s3/details.js';
import { S3Driver } from '../../../drivers/s3/driver.js';
import { DriverError } from '../../../drivers/sdk/errors.js';
import { createTestDriverContext } from '../../../drivers/sdk/testing.js';
import type { DataStoreInfo } from '../../../drivers/sdk/types.js';

const MiB = 1024 * 1024;
const store = (bucket: string, prefix?: string): DataStoreInfo => ({
  id: `ds-${bucket}`,
  name: bucket,
  provider: 's3',
  role: 'image',
  scope: { type: 'zone', zoneId: 'z1' },
  details: prefix === undefined ? { bucket } : { bucket, prefix },
  capacityBytes: 0,
});

describe('S3DetailsSchema', () => {
  it.each([
    ['strata-images', undefined, ''],
    ['strata.images', '/a//b/', 'a/b/'],
    ['abc', 'zone-1', 'zone-1/'],
  ])('accepts bucket %j with prefix %j (normalised to %j)', (bucket, prefix, expected) => {
    expect(S3DetailsSchema.parse({ bucket, ...(prefix === undefined ? {} : { prefix }) }).prefix).toBe(
      expected,
    );
  });

  it.each(['ab', 'Strata', 'strata_images', '192.168.0.1', 'a..b', '-abc', 'xn--abc', 'abc-s3alias'])(
    'refuses the bucket name %j',
    (bucket) => {
      expect(S3DetailsSchema.safeParse({ bucket }).success).toBe(false);
    },
  );

  it('refuses unknown keys and dot segments in the prefix', () => {
    expect(S3DetailsSchema.safeParse({ bucket: 'abc', Prefix: 'x' }).success).toBe(false);
    expect(S3DetailsSchema.safeParse({ bucket: 'abc', prefix: 'a/../b' }).success).toBe(false);
  });

  it('normalises an empty prefix to the bucket root', () => {
    expect(normalizePrefix('///')).toBe('');
  });
});

describe('S3Driver.copyAsync', () => {
  const s3 = mockClient(S3Client);
  const client = new S3Client({ region: 'us-east-1' });
  const ctx = createTestDriverContext({ services: { [S3_CLIENT_SERVICE]: () => client } });
  const src = {
    store: store('src-bucket', 'p'),
    object: { kind: 'template' as const, id: 't1', format: 'qcow2' as const },
  };
  const dst = { store: store('dst-bucket'), object: { kind: 'template' as const, id: 't1' } };

  beforeEach(() => {
    s3.reset();
  });

  it('copies small objects with one server-side CopyObject', async () => {
    s3.on(HeadObjectCommand, { Key: 'p/templates/t1/t1.qcow2' }).resolves({
      ContentLength: 3 * MiB,
      ETag: '"a"',
    });
    s3.on(HeadObjectCommand, { Key: 'templates/t1/t1.qcow2' }).rejects(
      Object.assign(new Error('NotFound'), { name: 'NotFound', $metadata: { httpStatusCode: 404 } }),
    );
    s3.on(CopyObjectCommand).resolves({});

    const result = await new S3Driver().copyAsync({ src, dst, ctx });

    expect(result).toEqual({ path: 'templates/t1/t1.qcow2', sizeBytes: 3 * MiB, format: 'qcow2' });
    expect(s3).toHaveReceivedCommandWith(CopyObjectCommand, {
      Bucket: 'dst-bucket',
      Key: 'templates/t1/t1.qcow2',
      CopySource: 'src-bucket/p/templates/t1/t1.qcow2',
    });
  });

  it('copies large objects part by part with UploadPartCopy ranges', async () => {
    s3.on(HeadObjectCommand, { Key: 'p/templates/t1/t1.qcow2' }).resolves({
      ContentLength: 12 * MiB,
      ETag: '"a"',
    });
    s3.on(HeadObjectCommand, { Key: 'templates/t1/t1.qcow2' }).rejects(
      Object.assign(new Error('NotFound'), { name: 'NotFound', $metadata: { httpStatusCode: 404 } }),
    );
    s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-1' });
    s3.on(UploadPartCopyCommand).callsFake((input: { PartNumber: number }) => ({
      CopyPartResult: { ETag: `"e${input.PartNumber}"` },
    }));
    s3.on(CompleteMultipartUploadCommand).resolves({});
    const driver = new S3Driver({ multipartCopyThresholdBytes: 5 * MiB, copyPartSizeBytes: 5 * MiB });

    await driver.copyAsync({ src, dst, ctx });

    const ranges = s3.commandCalls(UploadPartCopyCommand).map((c) => c.args[0].input.CopySourceRange);
    expect(ranges.sort()).toEqual([
      `bytes=0-${5 * MiB - 1}`,
      `bytes=${10 * MiB}-${12 * MiB - 1}`,
      `bytes=${5 * MiB}-${10 * MiB - 1}`,
    ]);
    expect(s3).toHaveReceivedCommandWith(CompleteMultipartUploadCommand, {
      UploadId: 'up-1',
      MultipartUpload: {
        Parts: [
          { ETag: '"e1"', PartNumber: 1 },
          { ETag: '"e2"', PartNumber: 2 },
          { ETag: '"e3"', PartNumber: 3 },
        ],
      },
    });
    expect(s3).not.toHaveReceivedCommand(CopyObjectCommand);
  });

  it('aborts the multipart upload when a part fails', async () => {
    s3.on(HeadObjectCommand, { Key: 'p/templates/t1/t1.qcow2' }).resolves({
      ContentLength: 12 * MiB,
      ETag: '"a"',
    });
    s3.on(HeadObjectCommand, { Key: 'templates/t1/t1.qcow2' }).rejects(
      Object.assign(new Error('NotFound'), { name: 'NotFound', $metadata: { httpStatusCode: 404 } }),
    );
    s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-2' });
    s3.on(UploadPartCopyCommand).rejects(
      Object.assign(new Error('slow down'), { $metadata: { httpStatusCode: 503 } }),
    );
    s3.on(AbortMultipartUploadCommand).resolves({});
    const driver = new S3Driver({ multipartCopyThresholdBytes: 5 * MiB, copyPartSizeBytes: 5 * MiB });

    const error = await driver.copyAsync({ src, dst, ctx }).catch((e) => e);

    expect(error).toBeInstanceOf(DriverError);
    expect((error as DriverError).retryable).toBe(true);
    expect(s3).toHaveReceivedCommandWith(AbortMultipartUploadCommand, { UploadId: 'up-2' });
  });
});
