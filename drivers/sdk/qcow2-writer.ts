/**
 * Writes a new, standalone qcow2 image (version 3, 64 KiB clusters, 16-bit refcounts, no backing
 * file) straight from data whose places are known in advance, without a qemu process: the layout
 * of a restored backup is known before any byte arrives, so every data cluster gets its place in
 * the file when its range is allocated, and the bytes are written there with positional writes,
 * in any order and many at once. The metadata (header, L1 table, refcount table and blocks) is
 * written by {@link Qcow2Writer.finish}, after every data write; until then the file is not a
 * valid image, so write it under a temporary name and rename it into place afterwards.
 *
 * Layout: cluster 0 holds the header, the L1 table follows, then L2 tables and data clusters in
 * the order their ranges were allocated (an L2 table just before the first data cluster it maps),
 * then the refcount table and its blocks. Every cluster of the file is used exactly once, so every
 * refcount is 1 and every L1 and L2 entry carries the COPIED flag, as qemu expects of an image
 * without internal snapshots. Ranges never allocated read as zeros.
 *
 * Memory stays flat in the disk's size: ranges must be allocated in increasing order, so an L2
 * table is complete, and written out, once allocation has moved past it; the writer holds one L2
 * table (64 KiB) and the L1 table (8 bytes per 512 MiB of virtual size).
 *
 * The format is qemu's docs/interop/qcow2.txt; `qemu-img check` accepts what this writes (see
 * test/unit/sdk/qcow2-writer.test.ts).
 */
import { type FileHandle, open } from 'node:fs/promises';
import { DriverInputError } from './errors.js';

const CLUSTER_BITS = 16;
/** Cluster size of the images this writer makes. */
export const QCOW2_CLUSTER_BYTES = 1 << CLUSTER_BITS;
const CLUSTER = QCOW2_CLUSTER_BYTES;
/** 8-byte entries per L2 table (one cluster): one table maps 512 MiB. */
const L2_ENTRIES = CLUSTER / 8;
/** 16-bit refcounts (refcount_order 4): one block counts 32768 clusters (2 GiB). */
const REFCOUNT_ORDER = 4;
const REFCOUNTS_PER_BLOCK = CLUSTER / 2;
/** 8-byte entries per refcount table cluster. */
const REFTABLE_ENTRIES = CLUSTER / 8;
const HEADER_LENGTH = 104;
const COPIED = 1n << 63n;
const MAGIC = 0x514649fb; // 'Q' 'F' 'I' 0xfb

/** Where a part of an allocated range lives in the file. */
export interface Qcow2Extent {
  /** Offset of this part within the allocated range. */
  rangeOffset: number;
  /** Offset in the image file. */
  fileOffset: number;
  length: number;
}

/** A guest range given its clusters, as {@link Qcow2Writer.allocate} returns it. */
export interface Qcow2Allocation {
  guestOffset: number;
  length: number;
  extents: Qcow2Extent[];
}

/**
 * A qcow2 image being written. Allocate ranges in increasing guest order (`allocate` is
 * synchronous, so call it where the order is known), write each range's bytes whenever they
 * arrive (`write`), then `finish`; on failure `close` and remove the file.
 *
 * @example
 * const image = await Qcow2Writer.create('/mnt/ds-1/volumes/.vol-9.tmp', 10 * 2 ** 30);
 * const a = image.allocate(0, 4 << 20);      // in increasing order
 * await image.write(a, bytes);                // in any order, many at once
 * await image.finish();                       // metadata written, fsynced, closed
 */
export class Qcow2Writer {
  /** Guest size in bytes, as in the header: the size asked for, rounded up to 512 bytes as qemu-img create does. */
  readonly virtualSizeBytes: number;
  private readonly l1: BigUint64Array;
  private readonly l1Clusters: number;
  /** Next free cluster of the file. */
  private nextCluster: number;
  /** The L1 index of the L2 table being filled, and its entries. */
  private l2Index = -1;
  private l2 = Buffer.alloc(CLUSTER);
  /** First guest cluster not yet allocated (allocation is in increasing order). */
  private nextGuestCluster = 0;
  private readonly tableWrites = new Set<Promise<void>>();
  private failure: { error: unknown } | undefined;
  private closed = false;

  private constructor(
    private readonly file: FileHandle,
    virtualSizeBytes: number,
  ) {
    this.virtualSizeBytes = Math.ceil(virtualSizeBytes / 512) * 512;
    const l1Size = Math.ceil(Math.ceil(this.virtualSizeBytes / CLUSTER) / L2_ENTRIES);
    this.l1 = new BigUint64Array(l1Size);
    this.l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / CLUSTER));
    this.nextCluster = 1 + this.l1Clusters;
  }

  /** Creates (or truncates) `path` for a new image of `virtualSizeBytes`. */
  static async create(path: string, virtualSizeBytes: number): Promise<Qcow2Writer> {
    if (!Number.isSafeInteger(virtualSizeBytes) || virtualSizeBytes <= 0) {
      throw new DriverInputError('virtualSizeBytes must be a positive integer', {
        context: { field: 'virtualSizeBytes' },
      });
    }
    return new Qcow2Writer(await open(path, 'w'), virtualSizeBytes);
  }

  /**
   * Gives the guest range [guestOffset, guestOffset + length) its clusters. `guestOffset` must be a
   * multiple of 64 KiB and lie past every range allocated before; a range's last cluster may be
   * partial. Synchronous: the L2 table allocation has moved past is written in the background and
   * its write awaited by `finish`.
   */
  allocate(guestOffset: number, length: number): Qcow2Allocation {
    if (guestOffset % CLUSTER !== 0 || length <= 0 || guestOffset + length > this.virtualSizeBytes) {
      throw new DriverInputError(
        `range ${guestOffset}+${length} is not cluster-aligned or lies outside the ${this.virtualSizeBytes}-byte disk`,
        { context: { field: 'guestOffset' } },
      );
    }
    const first = guestOffset / CLUSTER;
    if (first < this.nextGuestCluster) {
      throw new DriverInputError(`range at ${guestOffset} was allocated out of order`, {
        context: { field: 'guestOffset' },
      });
    }
    const clusters = Math.ceil(length / CLUSTER);
    const extents: Qcow2Extent[] = [];
    for (let c = first; c < first + clusters; c++) {
      const table = Math.floor(c / L2_ENTRIES);
      if (table !== this.l2Index) this.startTable(table);
      const fileOffset = this.nextCluster++ * CLUSTER;
      this.l2.writeBigUInt64BE(BigInt(fileOffset) | COPIED, (c % L2_ENTRIES) * 8);
      const rangeOffset = (c - first) * CLUSTER;
      const partLength = Math.min(CLUSTER, length - rangeOffset);
      const last = extents[extents.length - 1];
      if (last && last.fileOffset + last.length === fileOffset) last.length += partLength;
      else extents.push({ rangeOffset, fileOffset, length: partLength });
    }
    this.nextGuestCluster = first + clusters;
    return { guestOffset, length, extents };
  }

  /** Writes an allocated range's bytes (exactly `allocation.length` of them) to its clusters. */
  async write(allocation: Qcow2Allocation, bytes: Uint8Array): Promise<void> {
    if (bytes.byteLength !== allocation.length) {
      throw new DriverInputError(`${bytes.byteLength} bytes for a ${allocation.length}-byte range`, {
        context: { field: 'bytes' },
      });
    }
    for (const e of allocation.extents) {
      let done = 0;
      while (done < e.length) {
        const { bytesWritten } = await this.file.write(
          bytes,
          e.rangeOffset + done,
          e.length - done,
          e.fileOffset + done,
        );
        done += bytesWritten;
      }
    }
  }

  /** Clusters the file holds so far (header, L1, L2 tables, data); refcounts come on top at `finish`. */
  get clustersAllocated(): number {
    return this.nextCluster;
  }

  /**
   * Writes the last L2 table, the refcount table and blocks, the L1 table and the header, fsyncs
   * and closes the file. Call it after every `write` has resolved.
   */
  async finish(): Promise<void> {
    if (this.l2Index >= 0) this.flushTable();
    await this.settleTables();
    const dataEnd = this.nextCluster;
    // The refcount blocks count every cluster, themselves and the table included.
    let blocks = 0;
    let tableClusters = 0;
    for (;;) {
      const total = dataEnd + tableClusters + blocks;
      const b = Math.ceil(total / REFCOUNTS_PER_BLOCK);
      const t = Math.ceil(b / REFTABLE_ENTRIES);
      if (b === blocks && t === tableClusters) break;
      blocks = b;
      tableClusters = t;
    }
    const total = dataEnd + tableClusters + blocks;
    const tableAt = dataEnd;
    const blocksAt = tableAt + tableClusters;
    const reftable = Buffer.alloc(tableClusters * CLUSTER);
    for (let i = 0; i < blocks; i++) reftable.writeBigUInt64BE(BigInt((blocksAt + i) * CLUSTER), i * 8);
    await this.writeAll(reftable, tableAt * CLUSTER);
    const full = Buffer.alloc(CLUSTER);
    for (let i = 0; i < REFCOUNTS_PER_BLOCK; i++) full.writeUInt16BE(1, i * 2);
    for (let i = 0; i < blocks; i++) {
      const counted = Math.min(REFCOUNTS_PER_BLOCK, total - i * REFCOUNTS_PER_BLOCK);
      const block = counted === REFCOUNTS_PER_BLOCK ? full : Buffer.alloc(CLUSTER);
      if (block !== full) full.copy(block, 0, 0, counted * 2);
      await this.writeAll(block, (blocksAt + i) * CLUSTER);
    }
    const l1 = Buffer.alloc(this.l1Clusters * CLUSTER);
    for (const [i, entry] of this.l1.entries()) l1.writeBigUInt64BE(entry, i * 8);
    await this.writeAll(l1, CLUSTER);
    await this.writeAll(this.header(tableAt, tableClusters), 0);
    await this.file.sync();
    await this.close();
  }

  /** Closes the file (after a failure, or by `finish`). Safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled(this.tableWrites);
    await this.file.close();
  }

  private header(reftableAt: number, reftableClusters: number): Buffer {
    const h = Buffer.alloc(CLUSTER);
    h.writeUInt32BE(MAGIC, 0);
    h.writeUInt32BE(3, 4); // version
    // 8: backing_file_offset, 16: backing_file_size: none.
    h.writeUInt32BE(CLUSTER_BITS, 20);
    h.writeBigUInt64BE(BigInt(this.virtualSizeBytes), 24);
    // 32: crypt_method none.
    h.writeUInt32BE(this.l1.length, 36);
    h.writeBigUInt64BE(BigInt(CLUSTER), 40); // l1_table_offset
    h.writeBigUInt64BE(BigInt(reftableAt * CLUSTER), 48);
    h.writeUInt32BE(reftableClusters, 56);
    // 60: nb_snapshots, 64: snapshots_offset; 72, 80, 88: incompatible, compatible, autoclear features: none.
    h.writeUInt32BE(REFCOUNT_ORDER, 96);
    h.writeUInt32BE(HEADER_LENGTH, 100);
    // At HEADER_LENGTH: the end-of-extensions marker (type 0, length 0), zeros already.
    return h;
  }

  // A new L2 table for L1 entry `table`: the one being filled is complete and goes to the file.
  private startTable(table: number): void {
    if (this.l2Index >= 0) this.flushTable();
    this.l2Index = table;
    this.l2 = Buffer.alloc(CLUSTER);
    this.l1[table] = BigInt(this.nextCluster++ * CLUSTER) | COPIED;
  }

  private flushTable(): void {
    const offset = Number(this.l1[this.l2Index]! & ~COPIED);
    const pending = this.writeAll(this.l2, offset).catch((error: unknown) => {
      this.failure ??= { error };
    });
    this.tableWrites.add(pending);
    void pending.finally(() => this.tableWrites.delete(pending));
  }

  private async settleTables(): Promise<void> {
    await Promise.all(this.tableWrites);
    if (this.failure) throw this.failure.error;
  }

  private async writeAll(bytes: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < bytes.byteLength) {
      const { bytesWritten } = await this.file.write(bytes, done, bytes.byteLength - done, position + done);
      done += bytesWritten;
    }
  }
}
