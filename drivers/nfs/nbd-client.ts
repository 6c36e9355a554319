/**
 * qemu-nbd on a private unix socket and a minimal NBD client for it (fixed newstyle handshake,
 * NBD_OPT_EXPORT_NAME, simple replies): one qemu process per operation reads or writes any byte
 * range of an image through its whole backing chain, with no /dev/nbd kernel module.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DriverError, DriverInputError, DriverUnavailableError } from '../sdk/errors.js';
import type { HostOperationContext } from '../sdk/types.js';

/** Chunks in flight at once, for reads, uploads and downloads alike. */

const NBD_MAGIC = Buffer.from('NBDMAGIC');
const IHAVEOPT = 0x49484156454f5054n;
const NBD_OPT_EXPORT_NAME = 1;
const NBD_FLAG_FIXED_NEWSTYLE = 1;
const NBD_FLAG_NO_ZEROES = 2;
const NBD_REQUEST_MAGIC = 0x25609513;
const NBD_REPLY_MAGIC = 0x67446698;
const NBD_CMD = { read: 0, write: 1, disc: 2, flush: 3 } as const;

/** One NBD connection: pipelined requests, replies matched by handle. */
export interface NbdConnection {
  sizeBytes: number;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  flush(): Promise<void>;
}

/**
 * Serves `file` with qemu-nbd on a private unix socket, runs `work` with a connection to it, then
 * disconnects and waits for qemu-nbd to exit (it flushes and closes the image on the way out).
 */
export async function withNbd<T>(
  file: string,
  format: string,
  mode: 'read' | 'write',
  ctx: HostOperationContext,
  work: (nbd: NbdConnection) => Promise<T>,
): Promise<T> {
  // Unix socket paths are limited to ~107 bytes, so the socket lives in a short private tmp dir.
  const dir = await mkdtemp(join(tmpdir(), 'strata-nbd-'));
  const socketPath = join(dir, 's');
  const args = [`--format=${format}`, `--socket=${socketPath}`, '--shared=1', '--cache=writeback'];
  if (mode === 'read') args.push('--read-only');
  args.push(file);
  const child = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-8192);
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(null));
  });
  const onAbort = () => child.kill('SIGTERM');
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  let client: NbdClient | undefined;
  try {
    const socket = await connectWhenReady(socketPath, child, () => stderr, ctx.signal);
    client = new NbdClient(socket);
    await client.handshake();
    const result = await work(client);
    await client.disconnect();
    client = undefined;
    const code = await exited;
    if (code !== 0) {
      throw new DriverError(`qemu-nbd exited with ${code}: ${stderr.trim().slice(-500)}`, {
        code: 'QemuFailed',
      });
    }
    return result;
  } catch (error) {
    if (ctx.signal.aborted) throw ctx.signal.reason;
    throw error;
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
    client?.destroy();
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
    await rm(dir, { recursive: true, force: true });
  }
}

async function connectWhenReady(
  socketPath: string,
  child: ChildProcess,
  stderr: () => string,
  signal: AbortSignal,
): Promise<Socket> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (signal.aborted) throw signal.reason;
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new DriverError(`qemu-nbd exited early: ${stderr().trim().slice(-500)}`, { code: 'QemuFailed' });
    }
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const socket = connect(socketPath);
        socket.once('connect', () => {
          socket.off('error', reject);
          resolve(socket);
        });
        socket.once('error', reject);
      });
    } catch (error) {
      if (Date.now() > deadline) {
        throw new DriverUnavailableError(
          `qemu-nbd did not listen within 15 s: ${stderr().trim().slice(-500)}`,
          {
            cause: error,
          },
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

interface Pending {
  length: number;
  resolve(data: Buffer | undefined): void;
  reject(error: Error): void;
}

class NbdClient implements NbdConnection {
  sizeBytes = 0;
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve(b: Buffer): void; reject(e: Error): void } | undefined;
  private failure: Error | undefined;
  private readonly pending = new Map<bigint, Pending>();
  private nextHandle = 1n;

  constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.byteLength;
      this.pump();
    });
    socket.on('error', (error) => this.fail(error));
    socket.on('close', () => this.fail(new Error('NBD connection closed')));
  }

  async handshake(): Promise<void> {
    const greeting = await this.readExact(18);
    if (!greeting.subarray(0, 8).equals(NBD_MAGIC) || greeting.readBigUInt64BE(8) !== IHAVEOPT) {
      throw new DriverError('qemu-nbd did not speak fixed-newstyle NBD', { code: 'QemuFailed' });
    }
    const serverFlags = greeting.readUInt16BE(16);
    const noZeroes = (serverFlags & NBD_FLAG_NO_ZEROES) !== 0;
    const option = Buffer.alloc(20);
    option.writeUInt32BE(NBD_FLAG_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_NO_ZEROES : 0), 0);
    option.writeBigUInt64BE(IHAVEOPT, 4);
    option.writeUInt32BE(NBD_OPT_EXPORT_NAME, 12);
    option.writeUInt32BE(0, 16); // the default export, named ""
    this.socket.write(option);
    const exportInfo = await this.readExact(10 + (noZeroes ? 0 : 124));
    this.sizeBytes = Number(exportInfo.readBigUInt64BE(0));
    void this.replyLoop();
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request(NBD_CMD.read, offset, length) as Promise<Buffer>;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await this.request(NBD_CMD.write, offset, data.byteLength, data);
  }

  async flush(): Promise<void> {
    await this.request(NBD_CMD.flush, 0, 0);
  }

  /** NBD_CMD_DISC has no reply: send it and wait for the server to close the socket. */
  async disconnect(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.socket.end(this.header(NBD_CMD.disc, 0n, 0, 0));
    await closed;
  }

  destroy(): void {
    this.socket.destroy();
  }

  private header(type: number, handle: bigint, offset: number, length: number): Buffer {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    header.writeUInt16BE(0, 4);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(handle, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    return header;
  }

  private request(type: number, offset: number, length: number, data?: Buffer): Promise<Buffer | undefined> {
    if (this.failure) return Promise.reject(this.failure);
    if (offset + length > this.sizeBytes) {
      return Promise.reject(new DriverInputError(`range ${offset}+${length} is beyond the disk`));
    }
    const handle = this.nextHandle++;
    return new Promise((resolve, reject) => {
      this.pending.set(handle, { length: type === NBD_CMD.read ? length : 0, resolve, reject });
      this.socket.write(this.header(type, handle, offset, length));
      if (data) this.socket.write(data);
    });
  }

  private async replyLoop(): Promise<void> {
    try {
      for (;;) {
        const reply = await this.readExact(16);
        if (reply.readUInt32BE(0) !== NBD_REPLY_MAGIC) throw new Error('bad NBD reply magic');
        const error = reply.readUInt32BE(4);
        const handle = reply.readBigUInt64BE(8);
        const pending = this.pending.get(handle);
        if (!pending) throw new Error('NBD reply for an unknown request');
        this.pending.delete(handle);
        if (error !== 0) {
          // With simple replies the payload after an error is ambiguous: give up on the connection.
          const failure = new DriverError(`qemu-nbd reported error ${error}`, { code: 'QemuFailed' });
          pending.reject(failure);
          this.fail(failure);
          return;
        }
        pending.resolve(pending.length > 0 ? await this.readExact(pending.length) : undefined);
      }
    } catch (error) {
      this.fail(error as Error);
    }
  }

  private readExact(n: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.pump();
    });
  }

  private pump(): void {
    const waiter = this.waiter;
    if (!waiter || this.buffered < waiter.n) return;
    this.waiter = undefined;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks.length = 0;
    const taken = all.subarray(0, waiter.n);
    const rest = all.subarray(waiter.n);
    if (rest.byteLength > 0) this.chunks.push(rest);
    this.buffered = rest.byteLength;
    waiter.resolve(taken);
  }

  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    this.waiter?.reject(error);
    this.waiter = undefined;
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
  }
}
