import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { DriverConflictError, DriverInputError, ObjectNotFoundError } from '../../../drivers/sdk/errors.js';
import {
  QemuError,
  qemuCheck,
  qemuCompare,
  qemuConvert,
  qemuCreate,
  qemuInfo,
  qemuResize,
  qemuSnapshotApply,
  qemuSnapshotCreate,
  qemuSnapshotDelete,
  qemuSnapshotList,
} from '../../../drivers/sdk/qemu.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;
let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-qemu-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const write = (path: string, pattern: number, offset = 0) =>
  exec('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} ${offset} 64k`, path]);

describe('qemu helpers', () => {
  describe('qemuCreate and qemuInfo', () => {
    it('creates a qcow2 image of the requested virtual size', async () => {
      const path = join(dir, 'a.qcow2');

      await qemuCreate(path, { format: 'qcow2', sizeBytes: 4 * MiB });
      const info = await qemuInfo(path, { format: 'qcow2' });

      expect(info).toMatchObject({ format: 'qcow2', virtualSizeBytes: 4 * MiB, snapshots: [] });
    });

    it('refuses an image with a backing file unless allowed', async () => {
      const base = join(dir, 'base.qcow2');
      const clone = join(dir, 'clone.qcow2');
      await qemuCreate(base, { format: 'qcow2', sizeBytes: MiB });
      await qemuCreate(clone, { format: 'qcow2', backingFile: 'base.qcow2', backingFormat: 'qcow2' });

      await expect(qemuInfo(clone, { format: 'qcow2' })).rejects.toBeInstanceOf(DriverConflictError);
      await expect(qemuInfo(clone, { format: 'qcow2', allowBackingFile: true })).resolves.toMatchObject({
        backingFilename: 'base.qcow2',
        fullBackingFilename: base,
        virtualSizeBytes: MiB,
      });
    });

    it('refuses an image with an external data file unless allowed', async () => {
      const path = join(dir, 'ext.qcow2');
      await exec('qemu-img', [
        'create',
        '-q',
        '-f',
        'qcow2',
        '-o',
        `data_file=${join(dir, 'ext.data')}`,
        path,
        '1M',
      ]);

      await expect(qemuInfo(path, { format: 'qcow2' })).rejects.toThrow(/external data file/);
      await expect(qemuInfo(path, { format: 'qcow2', allowDataFile: true })).resolves.toMatchObject({
        dataFile: join(dir, 'ext.data'),
      });
    });

    it('reports a missing image as ObjectNotFoundError', async () => {
      await expect(qemuInfo(join(dir, 'nope.qcow2'), { format: 'qcow2' })).rejects.toBeInstanceOf(
        ObjectNotFoundError,
      );
    });

    it.each(['relative.qcow2', '-o', 'nbd:localhost:10809', 'json:{}'])(
      'refuses the non-absolute path %j before running qemu-img',
      async (path) => {
        await expect(qemuInfo(path, { format: 'qcow2' })).rejects.toBeInstanceOf(DriverInputError);
      },
    );

    it('always passes the format: qemu-img never probes', async () => {
      const path = join(dir, 'a.qcow2');
      await qemuCreate(path, { format: 'qcow2', sizeBytes: MiB });

      // Read as raw, a qcow2 is just bytes: qemu did not look at the header to pick a driver.
      await expect(qemuInfo(path, { format: 'raw' })).resolves.toMatchObject({ format: 'raw' });
      await expect(qemuInfo(path, { format: '' })).rejects.toBeInstanceOf(DriverInputError);
    });

    it('refuses a backing file that looks like a protocol', async () => {
      await expect(
        qemuCreate(join(dir, 'x.qcow2'), {
          format: 'qcow2',
          backingFile: 'nbd:evil:1',
          backingFormat: 'raw',
        }),
      ).rejects.toBeInstanceOf(DriverInputError);
    });
  });

  describe('qemuConvert and qemuCompare', () => {
    it('converts qcow2 to raw with equal content and reports progress up to 100', async () => {
      const src = join(dir, 'src.qcow2');
      const dst = join(dir, 'dst.raw');
      await qemuCreate(src, { format: 'qcow2', sizeBytes: 2 * MiB });
      await write(src, 0x42);
      const progress: number[] = [];

      await qemuConvert(src, dst, {
        srcFormat: 'qcow2',
        dstFormat: 'raw',
        onProgress: (p) => progress.push(p),
      });

      expect(await qemuCompare(src, dst, { formatA: 'qcow2', formatB: 'raw' })).toBe(true);
      expect(progress.at(-1)).toBe(100);
    });

    it('tells different images apart', async () => {
      const a = join(dir, 'a.qcow2');
      const b = join(dir, 'b.qcow2');
      await qemuCreate(a, { format: 'qcow2', sizeBytes: MiB });
      await qemuCreate(b, { format: 'qcow2', sizeBytes: MiB });
      await write(b, 0x01);

      expect(await qemuCompare(a, b, { formatA: 'qcow2', formatB: 'qcow2' })).toBe(false);
    });

    it('stops qemu-img when the signal aborts', async () => {
      const controller = new AbortController();
      controller.abort(new Error('deadline'));

      await expect(
        qemuConvert(join(dir, 'a'), join(dir, 'b'), {
          srcFormat: 'raw',
          dstFormat: 'raw',
          signal: controller.signal,
        }),
      ).rejects.toThrow('deadline');
    });
  });

  describe('qemuCheck', () => {
    it('passes a clean image', async () => {
      const path = join(dir, 'a.qcow2');
      await qemuCreate(path, { format: 'qcow2', sizeBytes: MiB });

      await expect(qemuCheck(path, { format: 'qcow2' })).resolves.toMatchObject({
        exitCode: 0,
        corruptions: 0,
      });
    });

    it('fails on a file that is not a qcow2 image', async () => {
      const path = join(dir, 'junk.qcow2');
      await writeFile(path, 'not an image');

      await expect(qemuCheck(path, { format: 'qcow2' })).rejects.toBeInstanceOf(QemuError);
    });
  });

  describe('qemuResize', () => {
    it('grows, and shrinks only when asked to', async () => {
      const path = join(dir, 'a.qcow2');
      await qemuCreate(path, { format: 'qcow2', sizeBytes: 2 * MiB });

      await qemuResize(path, 4 * MiB, { format: 'qcow2' });
      await expect(qemuResize(path, MiB, { format: 'qcow2' })).rejects.toBeInstanceOf(QemuError);
      await qemuResize(path, MiB, { format: 'qcow2', shrink: true });

      expect((await qemuInfo(path, { format: 'qcow2' })).virtualSizeBytes).toBe(MiB);
    });
  });

  describe('internal snapshots', () => {
    it('creates, lists, applies and deletes a snapshot', async () => {
      const path = join(dir, 'v.qcow2');
      const copy = join(dir, 'before.qcow2');
      await qemuCreate(path, { format: 'qcow2', sizeBytes: MiB });
      await write(path, 0x11);
      await qemuConvert(path, copy, { srcFormat: 'qcow2', dstFormat: 'qcow2' });

      await qemuSnapshotCreate(path, 'snap-1');
      await write(path, 0x22);
      await qemuSnapshotApply(path, 'snap-1');

      expect((await qemuSnapshotList(path)).map((s) => s.name)).toEqual(['snap-1']);
      expect(await qemuCompare(path, copy, { formatA: 'qcow2', formatB: 'qcow2' })).toBe(true);
      await qemuSnapshotDelete(path, 'snap-1');
      expect(await qemuSnapshotList(path)).toEqual([]);
    });

    it('refuses a snapshot name that could be read as an option', async () => {
      await expect(qemuSnapshotCreate(join(dir, 'v.qcow2'), '-l')).rejects.toBeInstanceOf(DriverInputError);
    });
  });
});
