import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { QCOW2_CLUSTER_BYTES, Qcow2Writer } from '../../../drivers/sdk/qcow2-writer.js';

jest.setTimeout(60_000);

const run = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-qcow2w-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function check(file: string) {
  // Exit code 0 only for an image without corruptions and without leaks.
  const { stdout } = await run('qemu-img', ['check', '--output=json', '-f', 'qcow2', file]);
  return JSON.parse(stdout) as Record<string, unknown>;
}

async function info(file: string) {
  const { stdout } = await run('qemu-img', ['info', '--output=json', '-f', 'qcow2', file]);
  return JSON.parse(stdout) as { 'virtual-size': number; format: string; 'backing-filename'?: string };
}

// Writes ranges in shuffled order, several at once, as a restore does.
async function writeShuffled(image: Qcow2Writer, ranges: Array<{ offset: number; bytes: Buffer }>) {
  const allocations = ranges.map((r) => ({ a: image.allocate(r.offset, r.bytes.length), bytes: r.bytes }));
  const order = allocations.map((_, i) => i).sort(() => Math.random() - 0.5);
  await Promise.all(order.map((i) => image.write(allocations[i]!.a, allocations[i]!.bytes)));
}

test('an image qemu accepts and reads as the same bytes as a raw file written alike', async () => {
  // 1 GiB + 1.5 KiB: three L2 tables, a last cluster and a last range that are partial.
  const size = GiB + 1536;
  const chunk = 192 * KiB; // not a divisor of 512 MiB: one range straddles an L2 table boundary
  const starts = [0, 5, 17, 2730, 2731, 2732, 4000, Math.floor(size / chunk)];
  const ranges = starts.map((k) => {
    const offset = k * chunk;
    return { offset, bytes: randomBytes(Math.min(chunk, size - offset)) };
  });
  expect(
    ranges.some(
      (r) => Math.floor(r.offset / (512 * MiB)) !== Math.floor((r.offset + chunk - 1) / (512 * MiB)),
    ),
  ).toBe(true);
  const file = join(dir, 'a.qcow2');
  const image = await Qcow2Writer.create(file, size);
  await writeShuffled(image, ranges);
  await image.finish();

  const raw = join(dir, 'a.raw');
  const handle = await open(raw, 'w');
  await handle.truncate(size);
  for (const r of ranges) await handle.write(r.bytes, 0, r.bytes.length, r.offset);
  await handle.close();

  const checked = await check(file);
  expect(checked).toMatchObject({ 'check-errors': 0 });
  expect(checked.corruptions ?? 0).toBe(0);
  expect(checked.leaks ?? 0).toBe(0);
  const described = await info(file);
  expect(described['virtual-size']).toBe(size);
  expect(described['backing-filename']).toBeUndefined();
  // Exit code 0: identical contents (1 would be a difference, 2 an error).
  await run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', file, raw]);
  // Only the written ranges are allocated: the image maps them as data, the rest as zeros.
  const { stdout } = await run('qemu-img', ['map', '--output=json', '-f', 'qcow2', file]);
  const mapped = (JSON.parse(stdout) as Array<{ start: number; length: number; data: boolean }>)
    .filter((e) => e.data)
    .reduce((sum, e) => sum + e.length, 0);
  // Whole clusters per range, cut at the disk's end.
  const expected = ranges.reduce(
    (sum, r) =>
      sum + Math.min(Math.ceil(r.bytes.length / QCOW2_CLUSTER_BYTES) * QCOW2_CLUSTER_BYTES, size - r.offset),
    0,
  );
  expect(mapped).toBe(expected);
});

test('more clusters than one refcount block counts, and an L1 table of two clusters', async () => {
  // 5 TiB virtual: 10240 L1 entries (two clusters). 2.5 GiB of ranges allocated (a sparse file:
  // only a few are written; the others are holes, which read as zeros): 40960+ clusters, two
  // refcount blocks.
  const size = 5 * 1024 * GiB;
  const file = join(dir, 'b.qcow2');
  const image = await Qcow2Writer.create(file, size);
  const marks: Array<{ offset: number; pattern: number }> = [];
  const stride = 3 * GiB;
  for (let k = 0; k < 640; k++) {
    const offset = k * stride;
    const allocation = image.allocate(offset, 4 * MiB);
    if (k % 97 === 0 || k === 639) {
      const pattern = (k % 250) + 1;
      await image.write(allocation, Buffer.alloc(4 * MiB, pattern));
      marks.push({ offset, pattern });
    }
  }
  expect(image.clustersAllocated).toBeGreaterThan(32768);
  await image.finish();
  const checked = await check(file);
  expect(checked.corruptions ?? 0).toBe(0);
  expect(checked.leaks ?? 0).toBe(0);
  expect((await info(file))['virtual-size']).toBe(size);
  const commands = marks.flatMap((m) => ['-c', `read -P ${m.pattern} ${m.offset} 4M`]);
  // An allocated range that was never written reads as zeros, and so does the space between ranges.
  commands.push('-c', `read -P 0 ${stride} 4M`, '-c', `read -P 0 ${4 * MiB} 64k`);
  const { stdout } = await run('qemu-io', ['-r', '-f', 'qcow2', ...commands, file]);
  expect(stdout).not.toMatch(/Pattern verification failed|error/i);
  expect(stdout.match(/^read /gm)).toHaveLength(commands.length / 2);
});

test('ranges out of order, misaligned or past the end are refused', async () => {
  const image = await Qcow2Writer.create(join(dir, 'c.qcow2'), 64 * MiB);
  image.allocate(4 * MiB, MiB);
  expect(() => image.allocate(0, MiB)).toThrow(/out of order/);
  expect(() => image.allocate(8 * MiB + 512, MiB)).toThrow(/cluster-aligned/);
  expect(() => image.allocate(63 * MiB, 2 * MiB)).toThrow(/outside/);
  await expect(image.write(image.allocate(16 * MiB, MiB), Buffer.alloc(10))).rejects.toThrow(/10 bytes/);
  await image.close();
});
