import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { mockClient } from 'aws-sdk-client-mock';
import { S3_CLIENT_SERVICE } from '../../../drivers/s3/client.js';
import { S3Driver } from '../../../drivers/s3/driver.js';
import {
  multipartEtag,
  partSizeFor,
  planParts,
  planStreamUpload,
  S3_LIMITS,
  uploadPartSize,
  validateCompletedParts,
} from '../../../drivers/s3/multipart.js';
import {
  DriverConflictError,
  DriverInputError,
  ObjectNotFoundError,
  UnsupportedOperationError,
} from '../../../drivers/sdk/errors.js';
import { createTestDriverContext } from '../../../drivers/sdk/testing.js';
import { type DataStoreDriver, type DataStoreInfo, isImageStoreDriver } from '../../../drivers/sdk/types.js';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const TiB = 1024 * GiB;

const s3Error = (name: string, status: number) =>
  Object.assign(new Error(name), { name, $metadata: { httpStatusCode: status } });

describe('S3 multipart arithmetic', () => {
  it.each([
    [1 * GiB, 8 * MiB],
    [78 * GiB, 8 * MiB],
    [100 * GiB, 11 * MiB],
    [1 * TiB, 105 * MiB],
    [5 * TiB, 525 * MiB],
  ])('streams %d bytes in parts of %d, never more than 10,000', (size, expected) => {
    const { partSize } = planStreamUpload(size, 8 * MiB, 256 * MiB);

    expect(partSize).toBe(expected);
    expect(Math.ceil(size / partSize)).toBeLessThanOrEqual(S3_LIMITS.maxParts);
    expect(partSize % MiB).toBe(0);
  });

  it('keeps streamed memory near the budget: four parts in flight when small, fewer as parts grow', () => {
    expect(planStreamUpload(undefined, 8 * MiB, 256 * MiB)).toEqual({ partSize: 8 * MiB, queueSize: 4 });
    expect(planStreamUpload(1 * TiB, 8 * MiB, 256 * MiB).queueSize).toBe(2);
    expect(planStreamUpload(5 * TiB, 8 * MiB, 256 * MiB).queueSize).toBe(1);
    // S3's 5 MiB minimum wins over a smaller configured part size.
    expect(planStreamUpload(10 * MiB, 1 * MiB, 256 * MiB).partSize).toBe(5 * MiB);
  });

  it('grows a presigned upload part size to fit 10,000 parts and refuses sizes S3 refuses', () => {
    expect(uploadPartSize(100 * GiB, 64 * MiB)).toBe(64 * MiB);
    expect(uploadPartSize(100 * GiB, 5 * MiB)).toBe(11 * MiB);
    expect(uploadPartSize(3 * MiB, 1 * MiB * 4)).toBe(4 * MiB); // one part: the last may be small
    expect(() => uploadPartSize(20 * MiB, 1 * MiB)).toThrow(DriverInputError);
    expect(() => uploadPartSize(20 * GiB, 6 * GiB)).toThrow(DriverInputError);
    expect(partSizeFor(undefined, 8 * MiB)).toBe(8 * MiB);
  });

  it('cuts an object into contiguous part ranges with a short last part', () => {
    const parts = planParts(11 * MiB + 7, 5 * MiB);

    expect(parts).toEqual([
      { partNumber: 1, offset: 0, sizeBytes: 5 * MiB },
      { partNumber: 2, offset: 5 * MiB, sizeBytes: 5 * MiB },
      { partNumber: 3, offset: 10 * MiB, sizeBytes: MiB + 7 },
    ]);
    expect(() => planParts(100 * GiB, 5 * MiB)).toThrow(DriverInputError);
  });

  it('validates a completion part list: 1..N, no gap, no duplicate, ETags present, sorted on return', () => {
    expect(
      validateCompletedParts([
        { partNumber: 3, etag: '"c"' },
        { partNumber: 1, etag: '"a"' },
        { partNumber: 2, etag: '"b"' },
      ]).map((p) => p.partNumber),
    ).toEqual([1, 2, 3]);
    expect(() => validateCompletedParts([])).toThrow(/non-empty/);
    expect(() => validateCompletedParts([{ partNumber: 2, etag: '"b"' }])).toThrow(/part 1 is missing/);
    expect(() =>
      validateCompletedParts([
        { partNumber: 1, etag: '"a"' },
        { partNumber: 1, etag: '"a"' },
      ]),
    ).toThrow(/part 1 is listed twice/);
    expect(() => validateCompletedParts([{ partNumber: 1, etag: '' }])).toThrow(DriverInputError);
    expect(() => validateCompletedParts([{ partNumber: 1.5, etag: '"a"' }])).toThrow(DriverInputError);
    const tooMany = Array.from({ length: 10_001 }, (_, i) => ({ partNumber: i + 1, etag: '"e"' }));
    expect(() => validateCompletedParts(tooMany)).toThrow(/at most 10000/);
  });

  it('computes the ETag S3 gives a multipart object, or none when part ETags are not MD5s', () => {
    const a = createHash('md5').update('a').digest('hex');
    const b = createHash('md5').update('b').digest('hex');
    const expected = createHash('md5')
      .update(Buffer.concat([Buffer.from(a, 'hex'), Buffer.from(b, 'hex')]))
      .digest('hex');

    expect(multipartEtag([`"${a}"`, b])).toBe(`"${expected}-2"`);
    expect(multipartEtag(['"not-an-md5"'])).toBeUndefined();
  });
});

describe('S3Driver as an ImageStoreDriver', () => {
  const s3 = mockClient(S3Client);
  const client = new S3Client({
    region: 'us-east-1',
    credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  const warnings: string[] = [];
  const logger = {
    debug() {},
    info() {},
    warn(message: string) {
      warnings.push(message);
    },
    error() {},
  };
  const ctx = createTestDriverContext({ logger, services: { [S3_CLIENT_SERVICE]: () => client } });
  const store: DataStoreInfo = {
    id: 'ds-1',
    name: 'images',
    provider: 's3',
    role: 'image',
    scope: { type: 'zone', zoneId: 'z1' },
    details: { bucket: 'images', prefix: 'zone-1' },
    capacityBytes: 0,
  };
  const object = { kind: 'template' as const, id: 'tpl-1', format: 'qcow2' as const };
  const key = 'zone-1/templates/tpl-1/tpl-1.qcow2';
  const driver = new S3Driver({ uploadPartSizeBytes: 5 * MiB });

  beforeEach(() => {
    s3.reset();
    warnings.length = 0;
  });

  it('is recognised by isImageStoreDriver; a driver without the methods is not', () => {
    expect(isImageStoreDriver(driver)).toBe(true);
    expect(isImageStoreDriver({ getCapabilities: () => ({}) } as unknown as DataStoreDriver)).toBe(false);
  });

  describe('deleteObjects', () => {
    const blobs = (n: number) =>
      Array.from({ length: n }, (_, i) => ({
        kind: 'snapshot' as const,
        format: 'raw' as const,
        id: `b${i}`,
        path: `backups/staging/j/${i}`,
      }));

    it('deletes in requests of at most 1000 keys under the store prefix; keys already gone are fine', async () => {
      s3.on(DeleteObjectsCommand).resolves({
        Errors: [{ Key: 'zone-1/backups/staging/j/3', Code: 'NoSuchKey' }],
      });
      await driver.deleteObjects({ store, ctx, objects: blobs(2500) });
      const calls = s3.commandCalls(DeleteObjectsCommand);
      expect(calls.map((c) => c.args[0].input.Delete?.Objects?.length)).toEqual([1000, 1000, 500]);
      expect(calls[0]!.args[0].input).toMatchObject({ Bucket: 'images', Delete: { Quiet: true } });
      expect(calls[2]!.args[0].input.Delete?.Objects?.at(-1)).toEqual({
        Key: 'zone-1/backups/staging/j/2499',
      });
    });

    it('fails as retryable when a key could not be deleted, naming it', async () => {
      s3.on(DeleteObjectsCommand).resolves({
        Errors: [{ Key: 'zone-1/backups/staging/j/1', Code: 'InternalError', Message: 'try again' }],
      });
      await expect(driver.deleteObjects({ store, ctx, objects: blobs(3) })).rejects.toMatchObject({
        code: 'Unavailable',
        message: expect.stringContaining('zone-1/backups/staging/j/1: InternalError try again'),
      });
    });

    it('sends nothing for no objects', async () => {
      await driver.deleteObjects({ store, ctx, objects: [] });
      expect(s3).toHaveReceivedCommandTimes(DeleteObjectsCommand, 0);
    });
  });

  describe('writeStream', () => {
    const bytes = (n: number) => Readable.from([Buffer.alloc(n, 1)]);
    const failing = (after: number) => {
      let sent = 0;
      return new Readable({
        read() {
          if (sent >= after) {
            this.destroy(new Error('source broke'));
            return;
          }
          sent += MiB;
          this.push(Buffer.alloc(MiB, 2));
        },
      });
    };

    it('uploads parts under the template key and completes them in order', async () => {
      s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-1' });
      s3.on(UploadPartCommand).callsFake((input: { PartNumber: number }) => ({
        ETag: `"e${input.PartNumber}"`,
      }));
      s3.on(CompleteMultipartUploadCommand).resolves({});
      const progress: number[] = [];

      const result = await driver.writeStream({
        store,
        ctx,
        object,
        body: bytes(12 * MiB),
        contentLength: 12 * MiB,
        onProgress: (n) => progress.push(n),
      });

      expect(result).toEqual({ path: 'templates/tpl-1/tpl-1.qcow2', sizeBytes: 12 * MiB, format: 'qcow2' });
      expect(s3).toHaveReceivedCommandWith(CreateMultipartUploadCommand, { Bucket: 'images', Key: key });
      expect(s3).toHaveReceivedCommandTimes(UploadPartCommand, 3);
      expect(s3).toHaveReceivedCommandWith(CompleteMultipartUploadCommand, {
        UploadId: 'up-1',
        MultipartUpload: {
          Parts: [
            { PartNumber: 1, ETag: '"e1"' },
            { PartNumber: 2, ETag: '"e2"' },
            { PartNumber: 3, ETag: '"e3"' },
          ],
        },
      });
      expect(progress.at(-1)).toBe(12 * MiB);
      expect(s3).not.toHaveReceivedCommand(AbortMultipartUploadCommand);
    });

    it('aborts the multipart upload and reports the source error when the body fails mid-way', async () => {
      s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-2' });
      s3.on(UploadPartCommand).resolves({ ETag: '"e"' });
      s3.on(AbortMultipartUploadCommand).resolves({});

      await expect(driver.writeStream({ store, ctx, object, body: failing(11 * MiB) })).rejects.toThrow(
        /source broke/,
      );

      expect(s3).toHaveReceivedCommandWith(AbortMultipartUploadCommand, { Key: key, UploadId: 'up-2' });
      expect(s3).not.toHaveReceivedCommand(CompleteMultipartUploadCommand);
    });

    it('aborts when a part upload fails', async () => {
      s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-3' });
      s3.on(UploadPartCommand).rejects(s3Error('AccessDenied', 403));
      s3.on(AbortMultipartUploadCommand).resolves({});

      const error = await driver
        .writeStream({ store, ctx, object, body: bytes(12 * MiB), contentLength: 12 * MiB })
        .catch((e: unknown) => e);

      expect(error).toEqual(expect.objectContaining({ code: 'AccessDenied' }));
      expect(s3).toHaveReceivedCommandWith(AbortMultipartUploadCommand, { UploadId: 'up-3' });
      expect(s3).not.toHaveReceivedCommand(CompleteMultipartUploadCommand);
    });

    it('keeps the source error and warns when the storage cannot abort (s3rver answers 405)', async () => {
      s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-4' });
      s3.on(UploadPartCommand).resolves({ ETag: '"e"' });
      s3.on(AbortMultipartUploadCommand).rejects(s3Error('MethodNotAllowed', 405));

      await expect(driver.writeStream({ store, ctx, object, body: failing(11 * MiB) })).rejects.toThrow(
        /source broke/,
      );

      expect(warnings).toContain('could not abort multipart upload');
    });

    it('refuses a body longer than contentLength before completing anything', async () => {
      s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-5' });
      s3.on(UploadPartCommand).resolves({ ETag: '"e"' });
      s3.on(AbortMultipartUploadCommand).resolves({});

      await expect(
        driver.writeStream({ store, ctx, object, body: bytes(12 * MiB), contentLength: 11 * MiB }),
      ).rejects.toBeInstanceOf(DriverInputError);

      expect(s3).not.toHaveReceivedCommand(CompleteMultipartUploadCommand);
      expect(s3).not.toHaveReceivedCommand(PutObjectCommand);
    });

    it('refuses an already aborted signal, a bad contentLength and a missing body without a request', async () => {
      const controller = new AbortController();
      controller.abort(new Error('cancelled'));
      const body = bytes(10);

      await expect(
        driver.writeStream({ store, ctx, object, body, signal: controller.signal }),
      ).rejects.toThrow(/cancelled/);
      await expect(
        driver.writeStream({ store, ctx, object, body: bytes(10), contentLength: 6 * TiB }),
      ).rejects.toBeInstanceOf(DriverInputError);
      await expect(
        driver.writeStream({ store, ctx, object, body: undefined as unknown as Readable }),
      ).rejects.toBeInstanceOf(DriverInputError);
      expect(body.destroyed).toBe(true);
      expect(s3.calls()).toHaveLength(0);
    });
  });

  describe('readStream and statObject', () => {
    it('reads an inclusive range and reports range and total sizes', async () => {
      s3.on(GetObjectCommand).resolves({
        Body: Readable.from([Buffer.from('hello')]) as never,
        ContentLength: 5,
        ContentRange: 'bytes 5-9/100',
      });

      const out = await driver.readStream({ store, ctx, object, range: { start: 5, end: 9 } });

      expect(out).toEqual(expect.objectContaining({ sizeBytes: 5, totalSizeBytes: 100 }));
      expect(s3).toHaveReceivedCommandWith(GetObjectCommand, { Key: key, Range: 'bytes=5-9' });
    });

    it('refuses a backwards or negative range without a request, maps a missing key', async () => {
      await expect(
        driver.readStream({ store, ctx, object, range: { start: 9, end: 5 } }),
      ).rejects.toBeInstanceOf(DriverInputError);
      await expect(
        driver.readStream({ store, ctx, object, range: { start: -1, end: 5 } }),
      ).rejects.toBeInstanceOf(DriverInputError);
      expect(s3.calls()).toHaveLength(0);
      s3.on(GetObjectCommand).rejects(s3Error('NoSuchKey', 404));
      await expect(driver.readStream({ store, ctx, object })).rejects.toBeInstanceOf(ObjectNotFoundError);
      s3.on(GetObjectCommand).rejects(s3Error('InvalidRange', 416));
      await expect(
        driver.readStream({ store, ctx, object, range: { start: 500, end: 600 } }),
      ).rejects.toBeInstanceOf(DriverInputError);
    });

    it('stats an object, and a missing one as undefined', async () => {
      s3.on(HeadObjectCommand)
        .resolvesOnce({ ContentLength: 42, ETag: '"x"' })
        .rejects(s3Error('NotFound', 404));

      await expect(driver.statObject({ store, ctx, object })).resolves.toEqual({
        sizeBytes: 42,
        etag: '"x"',
      });
      await expect(driver.statObject({ store, ctx, object })).resolves.toBeUndefined();
    });

    it('asks for the stored checksum only when told to, and gives it as hex', async () => {
      const sha = createHash('sha256').update('chunk').digest();
      s3.on(HeadObjectCommand).resolves({ ContentLength: 5, ChecksumSHA256: sha.toString('base64') });
      await expect(driver.statObject({ store, ctx, object, checksum: true })).resolves.toEqual({
        sizeBytes: 5,
        checksumSha256: sha.toString('hex'),
      });
      expect(s3.commandCalls(HeadObjectCommand)[0]?.args[0].input.ChecksumMode).toBe('ENABLED');
      await expect(driver.statObject({ store, ctx, object })).resolves.toEqual({ sizeBytes: 5 });
      expect(s3.commandCalls(HeadObjectCommand)[1]?.args[0].input.ChecksumMode).toBeUndefined();
      // A multipart object's composite checksum is no whole-object SHA-256.
      s3.on(HeadObjectCommand).resolves({ ContentLength: 5, ChecksumSHA256: `${sha.toString('base64')}-3` });
      await expect(driver.statObject({ store, ctx, object, checksum: true })).resolves.toEqual({
        sizeBytes: 5,
      });
    });
  });

  describe('presigned multipart uploads', () => {
    it('creates one upload and presigns ≤ 10,000 part URLs covering 100 GiB exactly', async () => {
      s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-big' });

      const up = await driver.createUpload({
        store,
        ctx,
        object,
        sizeBytes: 100 * GiB,
        partSizeBytes: 5 * MiB,
      });

      expect(up.uploadId).toBe('up-big');
      expect(up.path).toBe('templates/tpl-1/tpl-1.qcow2');
      expect(up.partSizeBytes).toBe(11 * MiB);
      expect(up.parts.length).toBeLessThanOrEqual(10_000);
      expect(up.parts.reduce((sum, p) => sum + p.sizeBytes, 0)).toBe(100 * GiB);
      const last = up.parts.at(-1)!;
      expect(new URL(last.url).searchParams.get('partNumber')).toBe(String(up.parts.length));
      expect(new URL(last.url).searchParams.get('uploadId')).toBe('up-big');
      expect(new URL(last.url).pathname).toBe(`/${key}`);
      expect(new URL(last.url).searchParams.get('X-Amz-Expires')).toBe('3600');
      expect(s3).toHaveReceivedCommandTimes(CreateMultipartUploadCommand, 1);
      // Parts after the first are signed from a template: the URL must be the SDK's own, byte for byte.
      const amzDate = new URL(last.url).searchParams.get('X-Amz-Date')!;
      const signingDate = new Date(
        amzDate.replace(/^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/, '$1-$2-$3T$4:$5:$6Z'),
      );
      const sdk = await getSignedUrl(
        client,
        new UploadPartCommand({
          Bucket: 'images',
          Key: key,
          UploadId: 'up-big',
          PartNumber: last.partNumber,
        }),
        { expiresIn: 3600, signingDate },
      );
      const sorted = (u: string) => [...new URL(u).searchParams].map((e) => e.join('=')).sort();
      expect(sorted(last.url)).toEqual(sorted(sdk));
      expect(new Set(up.parts.map((p) => new URL(p.url).searchParams.get('X-Amz-Date'))).size).toBe(1);
    }, 30_000);

    it('refuses sizes S3 refuses before creating anything', async () => {
      await expect(
        driver.createUpload({ store, ctx, object, sizeBytes: 20 * MiB, partSizeBytes: MiB }),
      ).rejects.toBeInstanceOf(DriverInputError);
      await expect(driver.createUpload({ store, ctx, object, sizeBytes: 0 })).rejects.toBeInstanceOf(
        DriverInputError,
      );
      await expect(
        driver.createUpload({ store, ctx, object, sizeBytes: 10, expiresSeconds: 700_000 }),
      ).rejects.toBeInstanceOf(DriverInputError);
      expect(s3.calls()).toHaveLength(0);
    });

    it('presigns fresh URLs for chosen parts, refusing numbers outside the upload', async () => {
      const common = { store, ctx, object, uploadId: 'up-1', sizeBytes: 11 * MiB, partSizeBytes: 5 * MiB };

      const [part] = await driver.presignUploadParts({ ...common, partNumbers: [3], expiresSeconds: 60 });

      expect(part).toEqual(expect.objectContaining({ partNumber: 3, offset: 10 * MiB, sizeBytes: MiB }));
      expect(new URL(part!.url).searchParams.get('X-Amz-Expires')).toBe('60');
      await expect(driver.presignUploadParts({ ...common, partNumbers: [4] })).rejects.toBeInstanceOf(
        DriverInputError,
      );
    });

    it('completes with the parts sorted and returns the stored size', async () => {
      s3.on(CompleteMultipartUploadCommand).resolves({});
      s3.on(HeadObjectCommand).resolves({ ContentLength: 11 * MiB });

      const result = await driver.completeUpload({
        store,
        ctx,
        object,
        uploadId: 'up-1',
        parts: [
          { partNumber: 2, etag: '"b"' },
          { partNumber: 1, etag: '"a"' },
        ],
        sizeBytes: 11 * MiB,
      });

      expect(result).toEqual({ path: 'templates/tpl-1/tpl-1.qcow2', sizeBytes: 11 * MiB, format: 'qcow2' });
      expect(s3).toHaveReceivedCommandWith(CompleteMultipartUploadCommand, {
        Key: key,
        UploadId: 'up-1',
        MultipartUpload: {
          Parts: [
            { PartNumber: 1, ETag: '"a"' },
            { PartNumber: 2, ETag: '"b"' },
          ],
        },
      });
    });

    it('refuses a bad part list without calling S3', async () => {
      const parts = [
        { partNumber: 1, etag: '"a"' },
        { partNumber: 3, etag: '"c"' },
      ];

      await expect(
        driver.completeUpload({ store, ctx, object, uploadId: 'up-1', parts }),
      ).rejects.toBeInstanceOf(DriverInputError);
      await expect(
        driver.completeUpload({ store, ctx, object, uploadId: 'bad id\n', parts: [parts[0]!] }),
      ).rejects.toBeInstanceOf(DriverInputError);
      expect(s3.calls()).toHaveLength(0);
    });

    it('deletes and refuses an assembled object of the wrong size', async () => {
      s3.on(CompleteMultipartUploadCommand).resolves({});
      s3.on(HeadObjectCommand).resolves({ ContentLength: 10 * MiB });
      s3.on(DeleteObjectCommand).resolves({});

      await expect(
        driver.completeUpload({
          store,
          ctx,
          object,
          uploadId: 'up-1',
          parts: [{ partNumber: 1, etag: '"a"' }],
          sizeBytes: 11 * MiB,
        }),
      ).rejects.toBeInstanceOf(DriverConflictError);
      expect(s3).toHaveReceivedCommandWith(DeleteObjectCommand, { Key: key });
    });

    it('treats NoSuchUpload on a retried completion as done only when the object has these parts', async () => {
      const a = createHash('md5').update('a').digest('hex');
      const parts = [{ partNumber: 1, etag: `"${a}"` }];
      s3.on(CompleteMultipartUploadCommand).rejects(s3Error('NoSuchUpload', 404));
      s3.on(HeadObjectCommand).resolves({ ContentLength: 7, ETag: multipartEtag([`"${a}"`]) });

      await expect(driver.completeUpload({ store, ctx, object, uploadId: 'up-1', parts })).resolves.toEqual(
        expect.objectContaining({ sizeBytes: 7 }),
      );

      s3.on(HeadObjectCommand).resolves({ ContentLength: 7, ETag: '"someone-else"' });
      await expect(
        driver.completeUpload({ store, ctx, object, uploadId: 'up-1', parts }),
      ).rejects.toBeInstanceOf(ObjectNotFoundError);
    });

    it('aborts idempotently: NoSuchUpload is success, 405/501 are unsupported, others fail', async () => {
      const abort = () => driver.abortUpload({ store, ctx, object, uploadId: 'up-1' });

      s3.on(AbortMultipartUploadCommand).resolvesOnce({}).rejectsOnce(s3Error('NoSuchUpload', 404));
      await expect(abort()).resolves.toBeUndefined();
      await expect(abort()).resolves.toBeUndefined();
      expect(s3).toHaveReceivedCommandWith(AbortMultipartUploadCommand, { Bucket: 'images', Key: key });

      s3.on(AbortMultipartUploadCommand).rejects(s3Error('MethodNotAllowed', 405));
      await expect(abort()).rejects.toBeInstanceOf(UnsupportedOperationError);
      s3.on(AbortMultipartUploadCommand).rejects(s3Error('AccessDenied', 403));
      await expect(abort()).rejects.toEqual(expect.objectContaining({ code: 'AccessDenied' }));
    });

    it('aborts the upload again when presigning fails after it was created', async () => {
      s3.on(CreateMultipartUploadCommand).resolves({ UploadId: 'up-x' });
      s3.on(AbortMultipartUploadCommand).resolves({});
      const broken = new S3Client({
        region: 'us-east-1',
        credentials: async () => {
          throw new Error('no credentials');
        },
      });
      const brokenCtx = createTestDriverContext({ services: { [S3_CLIENT_SERVICE]: () => broken } });

      await expect(
        driver.createUpload({ store, ctx: brokenCtx, object, sizeBytes: 6 * MiB }),
      ).rejects.toThrow(/no credentials/);
      expect(s3).toHaveReceivedCommandWith(AbortMultipartUploadCommand, { UploadId: 'up-x' });
    });
  });

  describe('listUploads', () => {
    it('follows every page, strips the store prefix and filters by olderThan', async () => {
      s3.on(ListMultipartUploadsCommand)
        .resolvesOnce({
          IsTruncated: true,
          NextKeyMarker: 'zone-1/templates/b/b.raw',
          NextUploadIdMarker: 'u2',
          Uploads: [
            { Key: 'zone-1/templates/a/a.raw', UploadId: 'u1', Initiated: new Date('2024-01-01T00:00:00Z') },
            { Key: 'zone-1/templates/b/b.raw', UploadId: 'u2', Initiated: new Date('2024-06-01T00:00:00Z') },
          ],
        })
        .resolvesOnce({
          IsTruncated: false,
          Uploads: [
            { Key: 'zone-1/isos/c/c.iso', UploadId: 'u3', Initiated: new Date('2024-02-01T00:00:00Z') },
          ],
        });

      const uploads = await driver.listUploads({ store, ctx, olderThan: new Date('2024-03-01T00:00:00Z') });

      expect(uploads).toEqual([
        { path: 'templates/a/a.raw', uploadId: 'u1', initiatedAt: '2024-01-01T00:00:00.000Z' },
        { path: 'isos/c/c.iso', uploadId: 'u3', initiatedAt: '2024-02-01T00:00:00.000Z' },
      ]);
      const calls = s3.commandCalls(ListMultipartUploadsCommand).map((c) => c.args[0].input);
      expect(calls).toEqual([
        expect.objectContaining({ Bucket: 'images', Prefix: 'zone-1/' }),
        expect.objectContaining({ KeyMarker: 'zone-1/templates/b/b.raw', UploadIdMarker: 'u2' }),
      ]);
    });

    it('says Unsupported when the endpoint lacks ListMultipartUploads (s3rver: 501)', async () => {
      s3.on(ListMultipartUploadsCommand).rejects(s3Error('NotImplemented', 501));

      await expect(driver.listUploads({ store, ctx })).rejects.toBeInstanceOf(UnsupportedOperationError);
    });

    it('refuses a foreign store, a missing ctx and an invalid date', async () => {
      await expect(driver.listUploads({ store: { ...store, provider: 'nfs' }, ctx })).rejects.toBeInstanceOf(
        DriverInputError,
      );
      await expect(driver.listUploads({ store, ctx: undefined as never })).rejects.toBeInstanceOf(
        DriverInputError,
      );
      await expect(driver.listUploads({ store, ctx, olderThan: new Date('nope') })).rejects.toBeInstanceOf(
        DriverInputError,
      );
    });
  });

  describe('presignGet and presignPut', () => {
    it('presigns a GET for an existing object only, and a PUT under the object key', async () => {
      s3.on(HeadObjectCommand).resolvesOnce({ ContentLength: 1 }).rejects(s3Error('NotFound', 404));

      const get = await driver.presignGet({ store, ctx, object, expiresSeconds: 900 });
      const put = await driver.presignPut({
        store,
        ctx,
        object: { ...object, path: 'templates/tpl-1/manifest.json' },
      });

      expect(new URL(get.url).pathname).toBe(`/${key}`);
      expect(new URL(get.url).searchParams.get('X-Amz-Expires')).toBe('900');
      expect(Date.parse(get.expiresAt) - Date.now()).toBeGreaterThan(890_000);
      expect(new URL(put.url).pathname).toBe('/zone-1/templates/tpl-1/manifest.json');
      expect(put.path).toBe('templates/tpl-1/manifest.json');
      // Checksums only when required: no checksum parameter a plain PUT could not satisfy.
      expect(put.url).not.toMatch(/checksum/i);
      await expect(driver.presignGet({ store, ctx, object })).rejects.toBeInstanceOf(ObjectNotFoundError);
    });

    it('signs the checksum of a PUT as a header the client must send, never into the query', async () => {
      const sha = createHash('sha256').update('chunk').digest();
      const put = await driver.presignPut({
        store,
        ctx,
        object: { ...object, path: 'backups/chunks/ab/abc' },
        checksumSha256: sha.toString('hex'),
      });
      const url = new URL(put.url);
      expect(url.searchParams.get('X-Amz-SignedHeaders')).toBe('host;x-amz-checksum-sha256');
      expect([...url.searchParams.keys()].filter((k) => /checksum/i.test(k))).toEqual([]);
      await expect(
        driver.presignPut({ store, ctx, object, checksumSha256: sha.toString('base64') }),
      ).rejects.toBeInstanceOf(DriverInputError);
    });

    it('signs without a HEAD when the caller knows the object exists', async () => {
      s3.on(HeadObjectCommand).rejects(s3Error('NotFound', 404));
      const get = await driver.presignGet({ store, ctx, object, knownToExist: true });
      expect(new URL(get.url).pathname).toBe(`/${key}`);
      expect(s3.commandCalls(HeadObjectCommand)).toHaveLength(0);
    });
  });
});
