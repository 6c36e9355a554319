import { execFile } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { DriverError, DriverInputError } from '../../../drivers/sdk/errors.js';
import {
  assertSafeImage,
  FormatMismatchError,
  IMAGE_HEAD_BYTES,
  type ImageInspection,
  ImageInspector,
  inspectImageBuffer,
  UnsafeImageError,
} from '../../../drivers/sdk/image-inspect.js';
import { qemuInfo } from '../../../drivers/sdk/qemu.js';
import type { ImageFormat } from '../../../drivers/sdk/types.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
const TiB = 1024 ** 4;
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-inspect-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A small deterministic PRNG (mulberry32), so a failing chunking can be replayed from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Feeds `data` in chunks of 1 byte to 1 MiB, log-uniform so tiny and huge chunks both occur. */
function inspectInChunks(data: Buffer, seed: number): ImageInspection {
  const random = prng(seed);
  const inspector = new ImageInspector();
  let offset = 0;
  while (offset < data.length) {
    const size = Math.max(1, Math.floor(2 ** (random() * 20)));
    inspector.update(data.subarray(offset, offset + size));
    offset += size;
  }
  return inspector.finish(data.length);
}

/** Inspects the file with several chunkings; they must all agree. */
async function inspectFile(path: string): Promise<ImageInspection> {
  const data = await readFile(path);
  const results = [11, 22, 33].map((seed) => inspectInChunks(data, seed));
  expect(results[1]).toEqual(results[0]);
  expect(results[2]).toEqual(results[0]);
  expect(inspectImageBuffer(data)).toEqual(results[0]);
  return results[0]!;
}

const qemuFormat = (format: ImageFormat) => (format === 'vhd' ? 'vpc' : format);

async function qemuVirtualSize(path: string, format: ImageFormat): Promise<number> {
  const info = await qemuInfo(path, {
    format: qemuFormat(format),
    allowBackingFile: true,
    allowDataFile: true,
  });
  return info.virtualSizeBytes;
}

async function create(name: string, format: string, size: string | undefined, ...options: string[]) {
  const path = join(dir, name);
  const args = ['create', '-q', '-f', format, ...options, path];
  if (size !== undefined) args.push(size);
  // LUKS key setup times a PBKDF run by the thread's CPU time; on a busy machine qemu-img sometimes
  // measures nothing and gives up ("Unable to get accurate CPU usage"). That is the tool, not the
  // image: try again.
  for (let attempt = 1; ; attempt++) {
    try {
      await exec('qemu-img', args);
      return path;
    } catch (e) {
      if (attempt >= 5 || !/Unable to get accurate CPU usage/.test(String((e as Error).message))) throw e;
    }
  }
}

async function writePattern(path: string, format: string, offset = 0, length = '1M') {
  await exec('qemu-io', ['-f', format, '-c', `write -P 0xab ${offset} ${length}`, path]);
}

function expectUnsafe(inspection: ImageInspection, declared: ImageFormat, reason: string): UnsafeImageError {
  try {
    assertSafeImage(inspection, declared);
  } catch (error) {
    expect(error).toBeInstanceOf(UnsafeImageError);
    expect(error).toBeInstanceOf(DriverInputError);
    expect(error).toMatchObject({ code: 'UnsafeImage', reason });
    return error as UnsafeImageError;
  }
  throw new Error(`expected an UnsafeImageError (${reason})`);
}

function expectMismatch(inspection: ImageInspection, declared: ImageFormat, actual: string): void {
  try {
    assertSafeImage(inspection, declared);
  } catch (error) {
    expect(error).toBeInstanceOf(FormatMismatchError);
    expect(error).toBeInstanceOf(DriverInputError);
    expect(error).toMatchObject({
      code: 'ImageFormatMismatch',
      declaredFormat: declared,
      actualFormat: actual,
    });
    return;
  }
  throw new Error(`expected a FormatMismatchError (${declared} vs ${actual})`);
}

/** A minimal ISO 9660 image: system area, a primary volume descriptor, a terminator. */
function buildIso(options: { blocks?: number; blockSize?: number; bigEndianBlocks?: number } = {}): Buffer {
  const blockSize = options.blockSize ?? 2048;
  const blocks = options.blocks ?? 20;
  const image = Buffer.alloc(Math.max(blocks * blockSize, 18 * 2048));
  const pvd = image.subarray(16 * 2048, 17 * 2048);
  pvd[0] = 1;
  pvd.write('CD001', 1, 'latin1');
  pvd[6] = 1;
  pvd.write('STRATA_TEST'.padEnd(32, ' '), 40, 'latin1');
  pvd.writeUInt32LE(blocks, 80);
  pvd.writeUInt32BE(options.bigEndianBlocks ?? blocks, 84);
  pvd.writeUInt16LE(blockSize, 128);
  pvd.writeUInt16BE(blockSize, 130);
  const terminator = image.subarray(17 * 2048, 18 * 2048);
  terminator[0] = 255;
  terminator.write('CD001', 1, 'latin1');
  terminator[6] = 1;
  return image;
}

describe('ImageInspector', () => {
  describe('qcow2', () => {
    it.each([
      ['version 3', ['-o', 'compat=1.1'], 3],
      ['version 2', ['-o', 'compat=0.10'], 2],
      ['2 MiB clusters', ['-o', 'cluster_size=2M'], 3],
    ])('reads the virtual size of a %s image as qemu does', async (_label, options, version) => {
      const path = await create('a.qcow2', 'qcow2', '10M', ...options);
      await writePattern(path, 'qcow2', 3 * MiB);

      const inspection = await inspectFile(path);

      expect(inspection).toMatchObject({
        format: 'qcow2',
        virtualSizeBytes: await qemuVirtualSize(path, 'qcow2'),
        encrypted: false,
        details: { version, encryption: 'none' },
      });
      expect(inspection.virtualSizeBytes).toBe(10 * MiB);
      expect(inspection.backingFile).toBeUndefined();
      expect(inspection.externalDataFile).toBeUndefined();
      expect(() => assertSafeImage(inspection, 'qcow2')).not.toThrow();
    });

    it('finds the backing file and its format, and refuses the image', async () => {
      await create('base.qcow2', 'qcow2', '4M');
      const path = await create('overlay.qcow2', 'qcow2', undefined, '-b', 'base.qcow2', '-F', 'qcow2');

      const inspection = await inspectFile(path);

      expect(inspection).toMatchObject({
        format: 'qcow2',
        backingFile: 'base.qcow2',
        virtualSizeBytes: await qemuVirtualSize(path, 'qcow2'),
        details: { backingFormat: 'qcow2' },
      });
      const error = expectUnsafe(inspection, 'qcow2', 'backing-file');
      expect(error.context).toMatchObject({ backingFile: 'base.qcow2' });
    });

    it('finds an external data file, and refuses the image', async () => {
      const dataFile = join(dir, 'x.raw');
      const path = await create('data.qcow2', 'qcow2', '4M', '-o', `data_file=${dataFile}`);

      const inspection = await inspectFile(path);

      expect(inspection).toMatchObject({
        format: 'qcow2',
        externalDataFile: dataFile,
        virtualSizeBytes: await qemuVirtualSize(path, 'qcow2'),
        details: { incompatibleFeatures: ['external-data-file'] },
      });
      expectUnsafe(inspection, 'qcow2', 'external-data-file');
    });

    it('refuses the data file feature bit even when the name extension is missing', async () => {
      const path = await create('data.qcow2', 'qcow2', '4M', '-o', `data_file=${join(dir, 'x.raw')}`);
      const data = await readFile(path);
      // Blank the extension's type so only the incompatible-feature bit remains.
      const at = data.indexOf(Buffer.from([0x44, 0x41, 0x54, 0x41]), 104);
      data.writeUInt32BE(0x12345678, at);

      const inspection = inspectImageBuffer(data);

      expect(inspection.externalDataFile).toBe('(external data file, unnamed)');
      expectUnsafe(inspection, 'qcow2', 'external-data-file');
    });

    it('reports LUKS encryption', async () => {
      const path = await create(
        'enc.qcow2',
        'qcow2',
        '4M',
        '--object',
        'secret,id=sec0,data=strata',
        '-o',
        'encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10',
      );

      const inspection = await inspectFile(path);

      expect(inspection).toMatchObject({
        format: 'qcow2',
        encrypted: true,
        virtualSizeBytes: await qemuVirtualSize(path, 'qcow2'),
        details: { encryption: 'luks', encryptionHeader: true },
      });
    }, 30_000); // LUKS key setup costs seconds of CPU on purpose

    it('refuses a virtual size beyond 64 TiB', async () => {
      const path = await create('huge.qcow2', 'qcow2', '100T');

      const inspection = await inspectFile(path);

      expect(inspection.virtualSizeBytes).toBe(100 * TiB);
      expectUnsafe(inspection, 'qcow2', 'implausible-size');
      expect(() => assertSafeImage(inspection, 'qcow2', { maxVirtualSizeBytes: 128 * TiB })).not.toThrow();
    });

    it('calls a header with an impossible cluster size malformed', async () => {
      const data = await readFile(await create('a.qcow2', 'qcow2', '4M'));
      data.writeUInt32BE(30, 20);

      const inspection = inspectImageBuffer(data);

      expect(inspection.malformed).toMatch(/cluster_bits/);
      expectUnsafe(inspection, 'qcow2', 'malformed');
    });

    it('reports qcow v1 as a foreign format, refused whatever was declared', async () => {
      const path = await create('old.qcow', 'qcow', '4M');

      const inspection = await inspectFile(path);

      expect(inspection).toMatchObject({ format: 'raw', foreignFormat: 'qcow' });
      expectUnsafe(inspection, 'qcow2', 'unsupported-format');
      expectUnsafe(inspection, 'raw', 'unsupported-format');
    });
  });

  describe('raw', () => {
    it('takes anything unrecognised as raw, sized by its length', async () => {
      const path = await create('a.raw', 'raw', '3M');
      await writePattern(path, 'raw', MiB);

      const inspection = await inspectFile(path);

      expect(inspection).toEqual({
        format: 'raw',
        virtualSizeBytes: await qemuVirtualSize(path, 'raw'),
        physicalSizeBytes: 3 * MiB,
        details: {},
      });
      expect(() => assertSafeImage(inspection, 'raw')).not.toThrow();
    });

    it('refuses an empty image', () => {
      const inspection = new ImageInspector().finish(0);

      expect(inspection).toMatchObject({ format: 'raw', virtualSizeBytes: 0 });
      expectUnsafe(inspection, 'raw', 'implausible-size');
    });
  });

  describe('vhd', () => {
    it.each([
      ['a dynamic disk', [], 'dynamic'],
      ['a fixed disk', ['-o', 'subformat=fixed'], 'fixed'],
      ['a dynamic disk sized by current_size', ['-o', 'force_size=on'], 'dynamic'],
      ['a fixed disk sized by current_size', ['-o', 'subformat=fixed,force_size=on'], 'fixed'],
    ])('reads the virtual size of %s as qemu does', async (_label, options, diskType) => {
      const path = await create('a.vhd', 'vpc', '10M', ...options);
      await writePattern(path, 'vpc', 2 * MiB);

      const inspection = await inspectFile(path);

      expect(inspection).toMatchObject({
        format: 'vhd',
        virtualSizeBytes: await qemuVirtualSize(path, 'vhd'),
        details: { diskType },
      });
      expect(inspection.malformed).toBeUndefined();
      expect(() => assertSafeImage(inspection, 'vhd')).not.toThrow();
    });

    it('calls a footer with a wrong checksum malformed', async () => {
      const data = await readFile(await create('a.vhd', 'vpc', '4M', '-o', 'subformat=fixed'));
      const timestamp = data.length - 512 + 24;
      data.writeUInt8(data.readUInt8(timestamp) ^ 1, timestamp); // the checksum no longer matches

      const inspection = inspectImageBuffer(data);

      expect(inspection).toMatchObject({ format: 'vhd', malformed: 'footer checksum mismatch' });
      expectUnsafe(inspection, 'vhd', 'malformed');
    });

    it('calls a fixed disk cut short malformed', async () => {
      const data = await readFile(await create('a.vhd', 'vpc', '4M', '-o', 'subformat=fixed'));
      const truncated = Buffer.concat([data.subarray(0, MiB), data.subarray(data.length - 512)]);

      expectUnsafe(inspectImageBuffer(truncated), 'vhd', 'malformed');
    });

    it('finds the parent of a differencing disk, and refuses the image', async () => {
      // qemu cannot create differencing VHDs: turn a dynamic disk into one, with a parent name.
      const data = await readFile(await create('a.vhd', 'vpc', '4M'));
      const setType = (footer: Buffer) => {
        footer.writeUInt32BE(4, 60);
        footer.writeUInt32BE(0, 64);
        let sum = 0;
        for (const byte of footer) sum += byte;
        footer.writeUInt32BE(~sum >>> 0, 64);
      };
      setType(data.subarray(0, 512));
      setType(data.subarray(data.length - 512));
      const parent = Buffer.from('C:\\parent.vhd', 'utf16le').swap16();
      parent.copy(data, 512 + 64);

      const inspection = inspectImageBuffer(data);

      expect(inspection).toMatchObject({
        format: 'vhd',
        backingFile: 'C:\\parent.vhd',
        details: { diskType: 'differencing' },
      });
      expectUnsafe(inspection, 'vhd', 'backing-file');
    });
  });

  describe('vmdk', () => {
    it.each([
      ['monolithicSparse', []],
      ['streamOptimized', ['-o', 'subformat=streamOptimized']],
    ])('reads the virtual size of a %s image as qemu does', async (createType, options) => {
      const path = await create('a.vmdk', 'vmdk', '10M', ...options);
      await writePattern(path, 'vmdk', 5 * MiB);

      const inspection = await inspectFile(path);

      expect(inspection).toMatchObject({
        format: 'vmdk',
        virtualSizeBytes: await qemuVirtualSize(path, 'vmdk'),
        details: { subformat: 'sparse', createType },
      });
      expect(inspection.backingFile).toBeUndefined();
      expect(inspection.externalDataFile).toBeUndefined();
      expect(() => assertSafeImage(inspection, 'vmdk')).not.toThrow();
    });

    it('reads the size from the stream footer when the grain directory is at the end', async () => {
      const path = await create('a.vmdk', 'vmdk', '10M', '-o', 'subformat=streamOptimized');
      const data = await readFile(path);
      const footer = Buffer.alloc(1536);
      footer.writeUInt32LE(3, 12); // footer marker
      data.copy(footer, 512, 0, 512);
      footer.writeBigUInt64LE(40960n, 512 + 12); // capacity: 20 MiB, only in the footer
      const start = Buffer.from(data);
      start.writeBigUInt64LE(0xffffffffffffffffn, 56); // grain directory at the end
      start.writeBigUInt64LE(1n, 12); // the first header's capacity is not the one qemu uses
      await writeFile(path, Buffer.concat([start, footer]));

      const inspection = await inspectFile(path);

      expect(inspection).toMatchObject({
        format: 'vmdk',
        virtualSizeBytes: 20 * MiB,
        details: { gdAtEnd: true },
      });
      expect(inspection.virtualSizeBytes).toBe(await qemuVirtualSize(path, 'vmdk'));
      expect(inspection.malformed).toBeUndefined();
      expect(() => assertSafeImage(inspection, 'vmdk')).not.toThrow();
    });

    it('refuses a linked clone (parentFileNameHint)', async () => {
      await create('base.vmdk', 'vmdk', '4M');
      const path = await create('child.vmdk', 'vmdk', undefined, '-b', 'base.vmdk', '-F', 'vmdk');

      const inspection = await inspectFile(path);

      expect(inspection).toMatchObject({
        format: 'vmdk',
        backingFile: 'base.vmdk',
        virtualSizeBytes: await qemuVirtualSize(path, 'vmdk'),
      });
      expectUnsafe(inspection, 'vmdk', 'backing-file');
    });

    it('refuses a parent CID other than ffffffff even without a name hint', async () => {
      const data = await readFile(await create('a.vmdk', 'vmdk', '4M'));
      const at = data.indexOf('parentCID=ffffffff');
      data.write('parentCID=1234abcd', at, 'latin1');

      const inspection = inspectImageBuffer(data);

      expect(inspection.backingFile).toMatch(/1234abcd/);
      expectUnsafe(inspection, 'vmdk', 'backing-file');
    });

    it('refuses a descriptor file whose extent is another file', async () => {
      const path = await create('flat.vmdk', 'vmdk', '4M', '-o', 'subformat=monolithicFlat');

      const inspection = await inspectFile(path);

      expect(inspection).toMatchObject({
        format: 'vmdk',
        externalDataFile: 'flat-flat.vmdk',
        virtualSizeBytes: await qemuVirtualSize(path, 'vmdk'),
        details: { subformat: 'descriptor', createType: 'monolithicFlat' },
      });
      expectUnsafe(inspection, 'vmdk', 'external-data-file');
    });

    it('finds extents listed far into a descriptor file, where qemu still reads them', () => {
      const descriptor = [
        '# Disk DescriptorFile',
        'version=1',
        'CID=fffffffe',
        'parentCID=ffffffff',
        'createType="monolithicFlat"',
        ...Array.from({ length: 600 }, (_, i) => `# padding comment ${i}`),
        'RW 8192 FLAT "/dev/sda" 0',
        '',
      ].join('\n');
      expect(descriptor.length).toBeGreaterThan(10 * 1024);

      const inspection = inspectImageBuffer(Buffer.from(descriptor, 'latin1'));

      expect(inspection).toMatchObject({
        format: 'vmdk',
        externalDataFile: '/dev/sda',
        virtualSizeBytes: 8192 * 512,
      });
      expectUnsafe(inspection, 'vmdk', 'external-data-file');
      expectMismatch(inspection, 'raw', 'vmdk');
    });

    it('calls a grain directory at the end without a stream footer malformed', async () => {
      const data = await readFile(await create('a.vmdk', 'vmdk', '4M', '-o', 'subformat=streamOptimized'));
      data.writeBigUInt64LE(0xffffffffffffffffn, 56);

      expectUnsafe(inspectImageBuffer(data), 'vmdk', 'malformed');
    });

    it('refuses a sparse header with no capacity, which makes qemu follow the embedded extents', async () => {
      const data = await readFile(await create('a.vmdk', 'vmdk', '4M'));
      data.writeBigUInt64LE(0n, 12);
      const at = data.indexOf('"a.vmdk"');
      data.write('"../../../etc/shadow"\n', at, 'latin1');

      const inspection = inspectImageBuffer(data);

      expect(inspection.externalDataFile).toBe('../../../etc/shadow');
      expectUnsafe(inspection, 'vmdk', 'external-data-file');
    });
  });

  describe('iso', () => {
    it('sizes an ISO 9660 image by its primary volume descriptor', () => {
      const image = Buffer.concat([buildIso({ blocks: 300 }), Buffer.alloc(4096)]); // padded after the volume

      const inspection = inspectInChunks(image, 7);

      expect(inspection).toMatchObject({
        format: 'iso',
        virtualSizeBytes: 300 * 2048,
        physicalSizeBytes: 300 * 2048 + 4096,
        details: { volumeId: 'STRATA_TEST', logicalBlockSize: 2048 },
      });
      expect(() => assertSafeImage(inspection, 'iso')).not.toThrow();
      expect(() => assertSafeImage(inspection, 'raw')).not.toThrow();
    });

    it('calls a descriptor whose both-endian halves disagree malformed', () => {
      const inspection = inspectImageBuffer(buildIso({ blocks: 300, bigEndianBlocks: 301 }));

      expectUnsafe(inspection, 'iso', 'malformed');
    });
  });

  describe('formats Strata does not take', () => {
    it.each(['vhdx', 'qed', 'vdi', 'parallels'])(
      'reports %s as foreign and refuses it whatever was declared',
      async (format) => {
        const path = await create(`a.${format}`, format, '4M');

        const inspection = await inspectFile(path);

        expect(inspection).toMatchObject({ format: 'raw', foreignFormat: format });
        expectUnsafe(inspection, 'raw', 'unsupported-format');
        expectUnsafe(inspection, 'qcow2', 'unsupported-format');
      },
    );
  });

  describe('streaming', () => {
    it('inspects through a pass-through stream and forwards every byte', async () => {
      const path = await create('a.vhd', 'vpc', '6M', '-o', 'subformat=fixed');
      const expected = await readFile(path);
      const inspector = new ImageInspector();
      let forwarded = 0;
      const sink = new Writable({
        write(chunk: Buffer, _encoding, callback) {
          forwarded += chunk.length;
          callback();
        },
      });

      await pipeline(createReadStream(path, { highWaterMark: 333 }), inspector.createPassThrough(), sink);
      const inspection = inspector.finish(expected.length);

      expect(forwarded).toBe(expected.length);
      expect(inspection).toEqual(inspectImageBuffer(expected));
      expect(inspection.format).toBe('vhd');
    });

    it('keeps only the head: bytes past the inspected window do not change a qcow2 result', async () => {
      const data = await readFile(await create('a.qcow2', 'qcow2', '4M'));
      const padded = Buffer.concat([data, Buffer.alloc(IMAGE_HEAD_BYTES, 0x55)]);

      const inspection = inspectImageBuffer(padded);

      expect(inspection).toMatchObject({
        format: 'qcow2',
        virtualSizeBytes: 4 * MiB,
        physicalSizeBytes: padded.length,
      });
    });

    it('refuses finish() with a length other than the bytes fed, and update() after finish()', () => {
      const inspector = new ImageInspector().update(Buffer.alloc(10));

      expect(() => inspector.finish(11)).toThrow(DriverInputError);
      inspector.finish(10);
      expect(() => inspector.update(Buffer.alloc(1))).toThrow(DriverError);
      expect(inspector.finish(10)).toBe(inspector.finish());
    });
  });
});

describe('assertSafeImage', () => {
  const tiny = async (format: string, ...options: string[]) =>
    inspectFile(await create(`t.${format}`, format, '4M', ...options));

  it('refuses a qcow2 declared as raw, the classic host-file read', async () => {
    const path = await create('evil.qcow2', 'qcow2', '1M', '-b', '/etc/passwd', '-F', 'raw', '-u');

    const inspection = await inspectFile(path);

    expect(inspection.backingFile).toBe('/etc/passwd');
    expectMismatch(inspection, 'raw', 'qcow2');
  });

  it.each([
    ['vmdk', 'vmdk', []],
    ['vhd', 'vpc', ['-o', 'subformat=fixed']],
    ['vhd', 'vpc', []],
  ] as const)('refuses a %s image declared as raw', async (actual, qemu, options) => {
    expectMismatch(await tiny(qemu, ...options), 'raw', actual);
  });

  it('refuses raw bytes declared as iso, qcow2, vhd or vmdk', async () => {
    const inspection = await tiny('raw');

    for (const declared of ['iso', 'qcow2', 'vhd', 'vmdk'] as const)
      expectMismatch(inspection, declared, 'raw');
  });

  it('refuses a qcow2 declared as vmdk', async () => {
    expectMismatch(await tiny('qcow2'), 'vmdk', 'qcow2');
  });
});
