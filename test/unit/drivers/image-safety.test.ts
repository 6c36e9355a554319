/**
 * The image-safety matrix: hostile images built for real (qemu-img, mkisofs, byte patches) are each
 * refused with their reason whatever way they are read (streamed in random chunks, or from a file
 * by head and tail as a host does); safe images of several formats and odd sizes are accepted with
 * the virtual size `qemu-img info -f <format>` reports.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  assertSafeImage,
  assertSafeImageFile,
  FormatMismatchError,
  type ImageInspection,
  ImageInspector,
  inspectImageFile,
  UnsafeImageError,
} from '../../../drivers/sdk/image-inspect.js';
import {
  type BuiltImage,
  buildHostileImages,
  buildSafeImages,
  writeMbr,
} from '../../support/hostile-images.js';

const exec = promisify(execFile);
let dir: string;
let hostile: BuiltImage[];
let safe: BuiltImage[];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-image-safety-'));
  hostile = await buildHostileImages(join(dir));
  safe = await buildSafeImages(dir);
}, 120_000);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Streams the file through an inspector in chunks of varying size, as an upload arrives. */
async function inspectStreamed(path: string): Promise<ImageInspection> {
  const data = await readFile(path);
  const inspector = new ImageInspector();
  let size = 1;
  for (let offset = 0; offset < data.length; offset += size) {
    size = size >= 300_000 ? 1 : size * 7 + 3;
    inspector.update(data.subarray(offset, offset + size));
  }
  return inspector.finish(data.length);
}

function refusalOf(inspection: ImageInspection, declared: BuiltImage['declared']): string | undefined {
  try {
    assertSafeImage(inspection, declared);
    return undefined;
  } catch (error) {
    if (error instanceof FormatMismatchError) return 'mismatch';
    if (error instanceof UnsafeImageError) return error.reason;
    throw error;
  }
}

async function qemuVirtualSize(image: BuiltImage): Promise<number> {
  const { stdout } = await exec('qemu-img', ['info', '--output=json', '-f', image.qemuFormat, image.path]);
  return (JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'];
}

const HOSTILE = [
  'qcow2 with an unknown incompatible feature bit',
  'qcow2 with incompatible feature bit 63',
  'qcow2 marked corrupt',
  'qcow2 version 4',
  'qcow2 with an external data file',
  'qcow2 with a backing file',
  'vmdk monolithicFlat descriptor (extent in flat-flat.vmdk)',
  'vmdk twoGbMaxExtentSparse descriptor',
  'vmdk whose header puts the descriptor elsewhere than 0x200',
  'sparse vmdk declaring createType vmfsSparse',
  'streamOptimized vmdk with an invalid footer marker',
  'streamOptimized vmdk whose footer disagrees with its header',
  'ISO 9660 with a qcow2 header in its system area, declared qcow2',
  'ISO 9660 with a qcow2 header in its system area, declared iso',
  'ISO 9660 with a sparse vmdk header in its system area, declared vmdk',
  'qed',
  'vhdx (not supported)',
  'raw bytes declared qcow2',
  'qcow2 (naming /etc/passwd) declared raw',
];

describe('hostile images', () => {
  it('builds exactly the named set', () => {
    expect(hostile.map((i) => i.name).sort()).toEqual([...HOSTILE].sort());
  });

  it.each(HOSTILE)('refuses %s with its reason, streamed or read from a file', async (name) => {
    const image = hostile.find((i) => i.name === name)!;
    expect(image).toBeDefined();

    const streamed = await inspectStreamed(image.path);
    const fromFile = await inspectImageFile(image.path);

    expect(fromFile).toEqual(streamed);
    expect(refusalOf(streamed, image.declared)).toBe(image.refusal);
  });

  it('refuses the polyglots whatever they are declared as', async () => {
    for (const name of ['polyglot.iso', 'vmdk-polyglot.iso']) {
      const inspection = await inspectImageFile(join(dir, name));
      for (const declared of ['qcow2', 'vmdk', 'iso', 'raw', 'vhd'] as const) {
        expect({ name, declared, refusal: refusalOf(inspection, declared) }).toEqual({
          name,
          declared,
          refusal: 'multiple-formats',
        });
      }
    }
  });

  it('refuses an unknown qcow2 feature bit even when the image is declared raw or vmdk', async () => {
    const inspection = await inspectImageFile(join(dir, 'unknown-bit.qcow2'));

    expect(inspection.unsupportedFeature).toMatch(/bit\(s\) 10/);
    expect(refusalOf(inspection, 'raw')).toBe('mismatch');
    expect(refusalOf(inspection, 'vmdk')).toBe('mismatch');
  });

  it('names the formats of a polyglot in the refusal', async () => {
    const inspection = await inspectImageFile(join(dir, 'polyglot.iso'));

    expect(inspection).toMatchObject({ format: 'qcow2', otherFormats: ['iso'] });
    expect(() => assertSafeImage(inspection, 'qcow2')).toThrow(/qcow2, iso/);
  });

  it('refuses a qcow2 whose first sector also ends in an MBR boot signature', async () => {
    const data = await readFile(join(dir, 'for-polyglot.qcow2'));
    writeMbr(data, { bootFlag: 0x80, type: 0x83, startLba: 2048, sectors: 100 });
    const inspection = new ImageInspector().update(data).finish();

    expect(inspection.otherFormats).toEqual(['mbr']);
    expect(refusalOf(inspection, 'qcow2')).toBe('multiple-formats');
  });

  it.each([
    ['an invalid boot flag', { bootFlag: 0x12, type: 0x83, startLba: 2048, sectors: 100 }, /boot flag/],
    ['no partition at all', { bootFlag: 0, type: 0, startLba: 0, sectors: 0 }, /no partition/],
    [
      'a protective GPT entry at LBA 2',
      { bootFlag: 0, type: 0xee, startLba: 2, sectors: 100, chs: [0, 2, 0] as [number, number, number] },
      /LBA 1/,
    ],
  ])('calls a raw disk whose MBR has %s malformed', (_label, entry, message) => {
    const data = writeMbr(Buffer.alloc(1024 * 1024), entry);
    const inspection = new ImageInspector().update(data).finish();

    expect(inspection.malformed).toMatch(message);
    expect(refusalOf(inspection, 'raw')).toBe('malformed');
  });

  it('keeps the host-side check to the same verdicts', async () => {
    for (const image of hostile) {
      const outcome = await assertSafeImageFile(image.path, image.declared).then(
        () => 'accepted',
        (error: unknown) =>
          error instanceof FormatMismatchError ? 'mismatch' : (error as UnsafeImageError).reason,
      );
      expect({ name: image.name, outcome }).toEqual({ name: image.name, outcome: image.refusal });
    }
  });
});

describe('safe images', () => {
  it('builds the whole matrix', () => {
    expect(safe.length).toBeGreaterThanOrEqual(19);
  });

  it('accepts each one with the virtual size qemu-img info reports', async () => {
    for (const image of safe) {
      const streamed = await inspectStreamed(image.path);
      const fromFile = await inspectImageFile(image.path);
      const expected = await qemuVirtualSize(image);

      expect({ name: image.name, refusal: refusalOf(streamed, image.declared) }).toEqual({
        name: image.name,
        refusal: undefined,
      });
      expect(fromFile).toEqual(streamed);
      expect({ name: image.name, virtualSizeBytes: streamed.virtualSizeBytes }).toEqual({
        name: image.name,
        virtualSizeBytes: expected,
      });
      // An ISO may also be installed as raw: qemu reads it as plain bytes either way.
      if (image.declared === 'iso') expect(refusalOf(streamed, 'raw')).toBeUndefined();
    }
  });

  it('records the UDF bridge and a hybrid ISO partition table without refusing them', async () => {
    expect((await inspectImageFile(join(dir, 'udf.iso'))).details).toMatchObject({ udf: 'NSR02' });
    const hybrid = await inspectImageFile(join(dir, 'hybrid.iso'));

    expect(hybrid).toMatchObject({ format: 'iso', details: { partitionTable: 'mbr' } });
    expect(hybrid.otherFormats).toBeUndefined();
  });
});
