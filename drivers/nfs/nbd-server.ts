/**
 * A minimal read-only NBD server on a unix socket: fixed newstyle handshake (NBD_OPT_GO,
 * NBD_OPT_INFO, NBD_OPT_EXPORT_NAME, NBD_OPT_LIST, NBD_OPT_ABORT; every other option answered
 * NBD_REP_ERR_UNSUP), then simple replies to NBD_CMD_READ, NBD_CMD_FLUSH and NBD_CMD_DISC. Writes,
 * trims and block-status queries are refused (the export is read-only and structured replies are
 * never negotiated). One export, named "". The bytes come from a caller's `read` function, so a
 * lazily restored volume's backing can fetch them on demand (./lazy-daemon.ts).
 */

import { unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';

const NBD_MAGIC = Buffer.from('NBDMAGIC');
const IHAVEOPT = 0x49484156454f5054n;
const OPT_REPLY_MAGIC = 0x3e889045565a9n;
const NBD_FLAG_FIXED_NEWSTYLE = 1;
const NBD_FLAG_NO_ZEROES = 2;
const NBD_FLAG_C_NO_ZEROES = 2;
const NBD_OPT = { exportName: 1, abort: 2, list: 3, info: 6, go: 7 } as const;
const NBD_REP_ACK = 1;
const NBD_REP_SERVER = 2;
const NBD_REP_INFO = 3;
const NBD_REP_ERR_UNSUP = 0x80000001;
const NBD_REP_ERR_INVALID = 0x80000003;
const NBD_REP_ERR_UNKNOWN = 0x80000006;
const NBD_INFO_EXPORT = 0;
const NBD_INFO_BLOCK_SIZE = 3;
/** HAS_FLAGS | READ_ONLY | CAN_MULTI_CONN: the bytes never change, so many connections may read. */
const TRANSMISSION_FLAGS = 1 | 2 | (1 << 8);
const NBD_REQUEST_MAGIC = 0x25609513;
const NBD_REPLY_MAGIC = 0x67446698;
const NBD_CMD = { read: 0, disc: 2, flush: 3 } as const;
const EPERM = 1;
const EIO = 5;
const EINVAL = 22;
/** Largest read served in one request (what qemu assumes when a server says nothing). */
export const NBD_MAX_READ_BYTES = 32 * 1024 * 1024;
const MAX_OPTION_BYTES = 64 * 1024;

/** What an {@link NbdExportServer} serves. */
export interface NbdExportSource {
  sizeBytes: number;
  /** The bytes of `[offset, offset + length)`; a rejection becomes an EIO reply, never bytes. */
  read(offset: number, length: number): Promise<Buffer>;
  /** Told about every read that failed, for the log. */
  onReadError?(error: unknown, offset: number, length: number): void;
}

/** A running server; {@link close} stops listening and drops every connection. */
export interface NbdExportServer {
  socketPath: string;
  close(): Promise<void>;
}

/**
 * Listens on `socketPath` (a stale socket file there is removed first) and serves `source` to
 * every client that connects.
 *
 * @example
 * const server = await serveNbdExport('/run/strata/v.sock', { sizeBytes, read: (o, l) => cache.read(o, l) });
 * // qemu-io -r -f raw 'nbd+unix:///?socket=/run/strata/v.sock' -c 'read 0 4k'
 */
export async function serveNbdExport(socketPath: string, source: NbdExportSource): Promise<NbdExportServer> {
  await unlink(socketPath).catch(() => undefined);
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    void new Connection(socket, source).run().catch(() => socket.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    socketPath,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

// One client: the handshake, then requests until NBD_CMD_DISC or the socket closes.
class Connection {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve(b: Buffer): void; reject(e: Error): void } | undefined;
  private closed: Error | undefined;
  private noZeroes = false;

  constructor(
    private readonly socket: Socket,
    private readonly source: NbdExportSource,
  ) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.byteLength;
      this.pump();
    });
    socket.once('close', () => this.fail(new Error('NBD client went away')));
  }

  async run(): Promise<void> {
    const greeting = Buffer.alloc(18);
    NBD_MAGIC.copy(greeting, 0);
    greeting.writeBigUInt64BE(IHAVEOPT, 8);
    greeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    this.socket.write(greeting);
    const clientFlags = (await this.readExact(4)).readUInt32BE(0);
    this.noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;
    if (!(await this.negotiate())) return;
    await this.transmit();
  }

  // Options until one enters transmission (true) or the client aborts (false).
  private async negotiate(): Promise<boolean> {
    for (;;) {
      const header = await this.readExact(16);
      if (header.readBigUInt64BE(0) !== IHAVEOPT) throw new Error('bad NBD option magic');
      const option = header.readUInt32BE(8);
      const length = header.readUInt32BE(12);
      if (length > MAX_OPTION_BYTES) throw new Error('NBD option too long');
      const data = length > 0 ? await this.readExact(length) : Buffer.alloc(0);
      switch (option) {
        case NBD_OPT.exportName: {
          if (data.toString('utf8') !== '') {
            this.socket.end();
            return false;
          }
          const info = Buffer.alloc(10 + (this.noZeroes ? 0 : 124));
          info.writeBigUInt64BE(BigInt(this.source.sizeBytes), 0);
          info.writeUInt16BE(TRANSMISSION_FLAGS, 8);
          this.socket.write(info);
          return true;
        }
        case NBD_OPT.abort:
          this.optionReply(option, NBD_REP_ACK);
          this.socket.end();
          return false;
        case NBD_OPT.list: {
          if (length !== 0) {
            this.optionReply(option, NBD_REP_ERR_INVALID);
            break;
          }
          const name = Buffer.alloc(4); // the name "" has length 0
          this.optionReply(option, NBD_REP_SERVER, name);
          this.optionReply(option, NBD_REP_ACK);
          break;
        }
        case NBD_OPT.info:
        case NBD_OPT.go: {
          const nameLength = data.byteLength >= 4 ? data.readUInt32BE(0) : -1;
          if (nameLength < 0 || data.byteLength < 4 + nameLength + 2) {
            this.optionReply(option, NBD_REP_ERR_INVALID);
            break;
          }
          if (nameLength !== 0) {
            this.optionReply(option, NBD_REP_ERR_UNKNOWN);
            break;
          }
          const exportInfo = Buffer.alloc(12);
          exportInfo.writeUInt16BE(NBD_INFO_EXPORT, 0);
          exportInfo.writeBigUInt64BE(BigInt(this.source.sizeBytes), 2);
          exportInfo.writeUInt16BE(TRANSMISSION_FLAGS, 10);
          this.optionReply(option, NBD_REP_INFO, exportInfo);
          const blockSize = Buffer.alloc(14);
          blockSize.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
          blockSize.writeUInt32BE(1, 2);
          blockSize.writeUInt32BE(4096, 6);
          blockSize.writeUInt32BE(NBD_MAX_READ_BYTES, 10);
          this.optionReply(option, NBD_REP_INFO, blockSize);
          this.optionReply(option, NBD_REP_ACK);
          if (option === NBD_OPT.go) return true;
          break;
        }
        default:
          // Structured replies, meta contexts, TLS, extended headers: not offered.
          this.optionReply(option, NBD_REP_ERR_UNSUP);
      }
    }
  }

  private optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const reply = Buffer.alloc(20);
    reply.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
    reply.writeUInt32BE(option, 8);
    reply.writeUInt32BE(type, 12);
    reply.writeUInt32BE(data.byteLength, 16);
    this.socket.write(data.byteLength > 0 ? Buffer.concat([reply, data]) : reply);
  }

  private async transmit(): Promise<void> {
    for (;;) {
      const request = await this.readExact(28);
      if (request.readUInt32BE(0) !== NBD_REQUEST_MAGIC) throw new Error('bad NBD request magic');
      const type = request.readUInt16BE(6);
      const handle = request.subarray(8, 16);
      const offset = Number(request.readBigUInt64BE(16));
      const length = request.readUInt32BE(24);
      if (type === NBD_CMD.disc) {
        this.socket.end();
        return;
      }
      if (type === 1) {
        // NBD_CMD_WRITE carries a payload: drain it, then refuse it (a huge one ends the connection).
        if (length > NBD_MAX_READ_BYTES) throw new Error('NBD write too large');
        await this.readExact(length);
        this.reply(handle, EPERM);
        continue;
      }
      if (type === NBD_CMD.flush) {
        this.reply(handle, 0);
        continue;
      }
      if (type !== NBD_CMD.read) {
        this.reply(handle, type === 4 || type === 6 ? EPERM : EINVAL);
        continue;
      }
      if (length === 0 || length > NBD_MAX_READ_BYTES || offset + length > this.source.sizeBytes) {
        this.reply(handle, EINVAL);
        continue;
      }
      // Reads are answered as they complete (simple replies match by handle), so a slow fetch
      // does not hold up a read of a chunk already cached.
      this.source.read(offset, length).then(
        (bytes) => {
          if (bytes.byteLength !== length) {
            this.source.onReadError?.(new Error(`read returned ${bytes.byteLength} bytes`), offset, length);
            this.reply(handle, EIO);
          } else {
            this.reply(handle, 0, bytes);
          }
        },
        (error: unknown) => {
          this.source.onReadError?.(error, offset, length);
          this.reply(handle, EIO);
        },
      );
    }
  }

  private reply(handle: Buffer, error: number, data?: Buffer): void {
    if (this.closed) return;
    const header = Buffer.alloc(16);
    header.writeUInt32BE(NBD_REPLY_MAGIC, 0);
    header.writeUInt32BE(error, 4);
    handle.copy(header, 8);
    // Header and payload in one write: replies to concurrent reads never interleave.
    this.socket.write(data ? Buffer.concat([header, data]) : header);
  }

  private readExact(n: number): Promise<Buffer> {
    if (this.closed) return Promise.reject(this.closed);
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
    if (this.closed) return;
    this.closed = error;
    this.waiter?.reject(error);
    this.waiter = undefined;
  }
}
