import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { EnvName } from '../../functions/env-names.js';
import { freshBucket, waitUntil } from '../support/integration.js';

describe('integration harness', () => {
  it('publishes the emulator endpoints to test workers through process.env', () => {
    expect(process.env[EnvName.DynamoEndpoint]).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(process.env[EnvName.S3Endpoint]).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  });

  it('freshBucket gives an empty bucket whose objects round-trip byte for byte', async () => {
    const { s3, bucket } = await freshBucket();
    const body = Buffer.from('qcow2 header? no, just bytes\n'.repeat(100));

    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: 'a/b.bin', Body: body }));

    const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: 'a/b.bin' }));
    expect(Buffer.from(await got.Body!.transformToByteArray())).toEqual(body);
    const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket }));
    expect(listed.Contents?.map((o) => o.Key)).toEqual(['a/b.bin']);
  });

  it('waitUntil returns the first truthy value and times out with a clear error', async () => {
    let calls = 0;
    await expect(waitUntil(() => ++calls >= 3 && calls)).resolves.toBe(3);
    await expect(waitUntil(() => false, 50)).rejects.toThrow(/within 50 ms/);
  });
});
