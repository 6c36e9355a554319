/**
 * Test fixture: the hostile and the safe disk images of the image-safety tests, built for real with
 * qemu-img, mkisofs (genisoimage) and byte patches in a temporary directory. Shared by the
 * inspector's unit tests, the host-side test and the integration test, so all three refuse (or
 * accept) exactly the same bytes.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ImageFormat } from '../../drivers/sdk/types.js';

const exec = promisify(execFile);
const MiB = 1024 * 1024;

/** One built image: where it is, what it is declared as, and (for hostile ones) why it is refused. */
export interface BuiltImage {
  name: string;
  path: string;
  declared: ImageFormat;
  /** The UnsafeImageError reason, or `mismatch` for a FormatMismatchError. Undefined: safe. */
  refusal?: string;
  /** qemu's driver name to ask `qemu-img info -f` (iso is read as raw). */
  qemuFormat: string;
}

async function qemuImg(...args: string[]): Promise<void> {
  await exec('qemu-img', args);
}

async function patch(path: string, edit: (data: Buffer) => Buffer | undefined): Promise<void> {
  const data = await readFile(path);
  await writeFile(path, edit(data) ?? data);
}

async function qcow2(dir: string, name: string, size = '4M', ...options: string[]): Promise<string> {
  const path = join(dir, name);
  await qemuImg('create', '-q', '-f', 'qcow2', ...options, path, size);
  return path;
}

async function iso(dir: string, name: string, ...options: string[]): Promise<string> {
  const src = join(dir, `${name}.src`);
  await mkdir(src, { recursive: true });
  // Incompressible content, so the volume has some real extent to it.
  const content = Buffer.alloc(300_000);
  for (let i = 0; i < content.length; i++) content[i] = (i * 2654435761) >>> 24;
  await writeFile(join(src, 'payload.bin'), content);
  const path = join(dir, name);
  await exec('mkisofs', ['-quiet', ...options, '-o', path, src]);
  return path;
}

/**
 * A streamOptimized VMDK the way VMware's one-pass writers lay it out: the grain directory "at the
 * end" (0xffff… in the first header) and a footer marker, a copy of the header and an
 * end-of-stream marker as the last 1536 bytes. qemu reads such files; it only writes the other kind.
 */
export async function streamOptimizedWithFooter(dir: string, name: string, size = '10M'): Promise<string> {
  const path = join(dir, name);
  await qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', path, size);
  await exec('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x3c 1M 64k', path]);
  await patch(path, (data) => {
    const footer = Buffer.alloc(1536);
    footer.writeUInt32LE(3, 12); // marker type: footer
    data.copy(footer, 512, 0, 512); // the header copy keeps the real grain directory offset
    const start = Buffer.from(data);
    start.writeBigUInt64LE(0xffffffffffffffffn, 56);
    return Buffer.concat([start, footer]);
  });
  return path;
}

/**
 * The hostile images: each must be refused (by the inspector at register/upload, and by the host
 * before qemu-img runs) with `refusal` as its reason.
 */
export async function buildHostileImages(dir: string): Promise<BuiltImage[]> {
  const images: BuiltImage[] = [];
  const add = (name: string, path: string, declared: ImageFormat, refusal: string, qemuFormat: string) =>
    images.push({ name, path, declared, refusal, qemuFormat });

  const unknownBit = await qcow2(dir, 'unknown-bit.qcow2', '4M', '-o', 'compat=1.1');
  await patch(unknownBit, (data) => {
    data.writeBigUInt64BE(data.readBigUInt64BE(72) | (1n << 10n), 72);
    return data;
  });
  add('qcow2 with an unknown incompatible feature bit', unknownBit, 'qcow2', 'unsupported-feature', 'qcow2');

  const highBit = await qcow2(dir, 'high-bit.qcow2', '4M', '-o', 'compat=1.1');
  await patch(highBit, (data) => {
    data.writeBigUInt64BE(data.readBigUInt64BE(72) | (1n << 63n), 72);
    return data;
  });
  add('qcow2 with incompatible feature bit 63', highBit, 'qcow2', 'unsupported-feature', 'qcow2');

  const corrupt = await qcow2(dir, 'corrupt.qcow2', '4M', '-o', 'compat=1.1');
  await patch(corrupt, (data) => {
    data.writeBigUInt64BE(data.readBigUInt64BE(72) | 2n, 72);
    return data;
  });
  add('qcow2 marked corrupt', corrupt, 'qcow2', 'malformed', 'qcow2');

  const v4 = await qcow2(dir, 'v4.qcow2');
  await patch(v4, (data) => {
    data.writeUInt32BE(4, 4);
    return data;
  });
  add('qcow2 version 4', v4, 'qcow2', 'malformed', 'qcow2');

  add(
    'qcow2 with an external data file',
    await qcow2(dir, 'data-file.qcow2', '4M', '-o', `data_file=${join(dir, 'data-file.raw')}`),
    'qcow2',
    'external-data-file',
    'qcow2',
  );
  add(
    'qcow2 with a backing file',
    await qcow2(dir, 'backed.qcow2', '1M', '-b', '/etc/hostname', '-F', 'raw', '-u'),
    'qcow2',
    'backing-file',
    'qcow2',
  );

  const flat = join(dir, 'flat.vmdk');
  await qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', flat, '4M');
  add(
    'vmdk monolithicFlat descriptor (extent in flat-flat.vmdk)',
    flat,
    'vmdk',
    'external-data-file',
    'vmdk',
  );

  const split = join(dir, 'split.vmdk');
  await qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', split, '4M');
  add('vmdk twoGbMaxExtentSparse descriptor', split, 'vmdk', 'external-data-file', 'vmdk');

  const moved = join(dir, 'desc-moved.vmdk');
  await qemuImg('create', '-q', '-f', 'vmdk', moved, '4M');
  await patch(moved, (data) => {
    // The header now points at sector 11 (the descriptor's second half, blank), qemu still reads 0x200.
    data.writeBigUInt64LE(11n, 28);
    data.writeBigUInt64LE(10n, 36);
    return data;
  });
  add('vmdk whose header puts the descriptor elsewhere than 0x200', moved, 'vmdk', 'malformed', 'vmdk');

  const vmfs = join(dir, 'vmfs.vmdk');
  await qemuImg('create', '-q', '-f', 'vmdk', vmfs, '4M');
  await patch(vmfs, (data) => {
    const at = data.indexOf('createType="monolithicSparse"');
    data.write('createType="vmfsSparse"      ', at, 'latin1');
    return data;
  });
  add('sparse vmdk declaring createType vmfsSparse', vmfs, 'vmdk', 'unsupported-subformat', 'vmdk');

  const brokenFooter = await streamOptimizedWithFooter(dir, 'bad-footer.vmdk');
  await patch(brokenFooter, (data) => {
    data.writeUInt32LE(2, data.length - 1536 + 12); // marker type 2 (grain directory), not footer
    return data;
  });
  add('streamOptimized vmdk with an invalid footer marker', brokenFooter, 'vmdk', 'malformed', 'vmdk');

  const otherDescriptor = await streamOptimizedWithFooter(dir, 'footer-desc.vmdk');
  await patch(otherDescriptor, (data) => {
    data.writeBigUInt64LE(5n, data.length - 1024 + 28); // the footer names another descriptor
    return data;
  });
  add(
    'streamOptimized vmdk whose footer disagrees with its header',
    otherDescriptor,
    'vmdk',
    'malformed',
    'vmdk',
  );

  const polyglot = await iso(dir, 'polyglot.iso');
  const header = await readFile(await qcow2(dir, 'for-polyglot.qcow2', '1M'));
  await patch(polyglot, (data) => {
    header.copy(data, 0, 0, 4096); // qcow2 header in the ISO's 32 KiB system area
    return data;
  });
  add(
    'ISO 9660 with a qcow2 header in its system area, declared qcow2',
    polyglot,
    'qcow2',
    'multiple-formats',
    'qcow2',
  );
  add(
    'ISO 9660 with a qcow2 header in its system area, declared iso',
    polyglot,
    'iso',
    'multiple-formats',
    'raw',
  );

  const vmdkIso = await iso(dir, 'vmdk-polyglot.iso');
  const sparse = join(dir, 'for-polyglot.vmdk');
  await qemuImg('create', '-q', '-f', 'vmdk', sparse, '1M');
  const sparseHeader = await readFile(sparse);
  await patch(vmdkIso, (data) => {
    sparseHeader.copy(data, 0, 0, 0x200 + 20 * 512);
    return data;
  });
  add(
    'ISO 9660 with a sparse vmdk header in its system area, declared vmdk',
    vmdkIso,
    'vmdk',
    'multiple-formats',
    'vmdk',
  );

  const qed = join(dir, 'a.qed');
  await qemuImg('create', '-q', '-f', 'qed', qed, '4M');
  add('qed', qed, 'qcow2', 'unsupported-format', 'qed');

  const vhdx = join(dir, 'a.vhdx');
  await qemuImg('create', '-q', '-f', 'vhdx', vhdx, '4M');
  add('vhdx (not supported)', vhdx, 'vhd', 'unsupported-format', 'vhdx');

  const raw = join(dir, 'plain.raw');
  await qemuImg('create', '-q', '-f', 'raw', raw, '2M');
  add('raw bytes declared qcow2', raw, 'qcow2', 'mismatch', 'raw');

  const liar = await qcow2(dir, 'liar.qcow2', '1M', '-b', '/etc/passwd', '-F', 'raw', '-u');
  add('qcow2 (naming /etc/passwd) declared raw', liar, 'raw', 'mismatch', 'qcow2');

  return images;
}

/** The safe images: each must be accepted with qemu-img info's virtual size. */
export async function buildSafeImages(dir: string): Promise<BuiltImage[]> {
  const images: BuiltImage[] = [];
  const add = (name: string, path: string, declared: ImageFormat, qemuFormat: string) =>
    images.push({ name, path, declared, qemuFormat });

  add(
    'qcow2 v2 (compat=0.10), 1 MiB',
    await qcow2(dir, 'v2.qcow2', String(MiB), '-o', 'compat=0.10'),
    'qcow2',
    'qcow2',
  );
  add(
    'qcow2 v3, 10 MiB + 512 B',
    await qcow2(dir, 'v3.qcow2', String(10 * MiB + 512), '-o', 'compat=1.1'),
    'qcow2',
    'qcow2',
  );
  add(
    'qcow2 v3 with extended L2 entries and zstd, 3 MiB',
    await qcow2(dir, 'l2.qcow2', '3M', '-o', 'compat=1.1,extended_l2=on,compression_type=zstd'),
    'qcow2',
    'qcow2',
  );
  const dirty = await qcow2(dir, 'dirty.qcow2', '2M', '-o', 'compat=1.1,lazy_refcounts=on');
  await patch(dirty, (data) => {
    data.writeBigUInt64BE(data.readBigUInt64BE(72) | 1n, 72); // dirty: refcounts to rebuild on write
    return data;
  });
  add('qcow2 v3 with the dirty bit, 2 MiB', dirty, 'qcow2', 'qcow2');

  for (const [label, size] of [
    ['1 MiB', String(MiB)],
    ['10 MiB + 512 B', String(10 * MiB + 512)],
  ] as const) {
    const dynamic = join(dir, `dynamic-${size}.vhd`);
    await qemuImg('create', '-q', '-f', 'vpc', dynamic, size);
    add(`vhd dynamic, ${label}`, dynamic, 'vhd', 'vpc');
    const fixed = join(dir, `fixed-${size}.vhd`);
    await qemuImg('create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', fixed, size);
    add(`vhd fixed, ${label}`, fixed, 'vhd', 'vpc');
  }

  for (const [label, size] of [
    ['1 MiB', String(MiB)],
    ['10 MiB + 512 B', String(10 * MiB + 512)],
  ] as const) {
    const sparse = join(dir, `sparse-${size}.vmdk`);
    await qemuImg('create', '-q', '-f', 'vmdk', sparse, size);
    add(`vmdk monolithicSparse, ${label}`, sparse, 'vmdk', 'vmdk');
    const stream = join(dir, `stream-${size}.vmdk`);
    await qemuImg('create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', stream, size);
    add(`vmdk streamOptimized, ${label}`, stream, 'vmdk', 'vmdk');
  }
  add(
    'vmdk streamOptimized with a footer at the end',
    await streamOptimizedWithFooter(dir, 'footer.vmdk'),
    'vmdk',
    'vmdk',
  );

  add('ISO 9660', await iso(dir, 'plain.iso'), 'iso', 'raw');
  add('ISO 9660 + UDF bridge', await iso(dir, 'udf.iso', '-udf'), 'iso', 'raw');
  const hybrid = await iso(dir, 'hybrid.iso');
  await patch(hybrid, (data) =>
    writeMbr(data, { bootFlag: 0x80, type: 0x17, startLba: 0, sectors: data.length / 512 }),
  );
  add('hybrid ISO (an MBR partition table in the system area)', hybrid, 'iso', 'raw');

  for (const [label, size] of [
    ['1 MiB', MiB],
    ['10 MiB + 512 B', 10 * MiB + 512],
    ['3 MiB + 7 B', 3 * MiB + 7],
  ] as const) {
    const raw = join(dir, `raw-${size}.raw`);
    const data = Buffer.alloc(size);
    data.fill(0x5a, 4096, 8192);
    await writeFile(raw, data);
    add(`raw, ${label}`, raw, 'raw', 'raw');
  }
  const gpt = join(dir, 'gpt.raw');
  const disk = Buffer.alloc(2 * MiB);
  writeMbr(disk, { bootFlag: 0, type: 0xee, startLba: 1, sectors: disk.length / 512 - 1, chs: [0, 2, 0] });
  disk.write('EFI PART', 512, 'latin1');
  await writeFile(gpt, disk);
  add('raw disk with a GPT protective MBR', gpt, 'raw', 'raw');

  return images;
}

/** Writes one MBR partition entry (entry 0) and the boot signature into `data`'s first sector. */
export function writeMbr(
  data: Buffer,
  entry: {
    bootFlag: number;
    type: number;
    startLba: number;
    sectors: number;
    chs?: [number, number, number];
  },
): Buffer {
  const at = 446;
  data[at] = entry.bootFlag;
  const [c, h, s] = entry.chs ?? [0, 1, 1];
  data[at + 1] = c;
  data[at + 2] = h;
  data[at + 3] = s;
  data[at + 4] = entry.type;
  data[at + 5] = 0xff;
  data[at + 6] = 0xff;
  data[at + 7] = 0xff;
  data.writeUInt32LE(entry.startLba, at + 8);
  data.writeUInt32LE(entry.sectors, at + 12);
  data.writeUInt16LE(0xaa55, 510);
  return data;
}
