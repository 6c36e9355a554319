/**
 * The embedded stack's image store: s3rver serving buckets from a directory on local disk.
 *
 * Two traps are handled here (see ../shared/TOOLCHAIN.md):
 * - s3rver encrypts ListObjectsV2 continuation tokens with single DES, which OpenSSL 3 no longer has.
 *   3DES-EDE with the same 8-byte key repeated three times computes exactly the same blocks, so we
 *   substitute it for the `des` algorithm only.
 * - the SDK's default request checksums frame streamed bodies as aws-chunked, which s3rver stores
 *   verbatim; clients must use {@link localS3ClientConfig} (checksums only when required).
 */

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { S3ClientConfig } from '@aws-sdk/client-s3';
import S3rver from 's3rver';

let desPatched = false;

function patchSingleDes(): void {
  if (desPatched) return;
  desPatched = true;
  const triple = (key: crypto.CipherKey): Buffer => {
    const k = Buffer.from(key as Buffer);
    return Buffer.concat([k, k, k]);
  };
  const createCipheriv = crypto.createCipheriv.bind(crypto) as (
    alg: string,
    key: crypto.CipherKey,
    iv: crypto.BinaryLike | null,
  ) => crypto.Cipher;
  const createDecipheriv = crypto.createDecipheriv.bind(crypto) as (
    alg: string,
    key: crypto.CipherKey,
    iv: crypto.BinaryLike | null,
  ) => crypto.Decipher;
  const patched = crypto as unknown as Record<'createCipheriv' | 'createDecipheriv', unknown>;
  patched.createCipheriv = (alg: string, key: crypto.CipherKey, iv: crypto.BinaryLike | null) =>
    alg === 'des' ? createCipheriv('des-ede3-cbc', triple(key), iv) : createCipheriv(alg, key, iv);
  patched.createDecipheriv = (alg: string, key: crypto.CipherKey, iv: crypto.BinaryLike | null) =>
    alg === 'des' ? createDecipheriv('des-ede3-cbc', triple(key), iv) : createDecipheriv(alg, key, iv);
}

export interface S3Emulator {
  /** `http://127.0.0.1:PORT` */
  endpoint: string;
  stop(): Promise<void>;
}

/** Starts s3rver on 127.0.0.1 (port 0 picks a free one), storing objects under `dir`. */
export async function startS3Emulator(options: {
  dir: string;
  port?: number;
  buckets?: string[];
}): Promise<S3Emulator> {
  patchSingleDes();
  await mkdir(options.dir, { recursive: true });
  const server = new S3rver({
    address: '127.0.0.1',
    port: options.port ?? 0,
    directory: options.dir,
    silent: true,
    allowMismatchedSignatures: true,
    configureBuckets: (options.buckets ?? []).map((name) => ({ name, configs: [] })),
  });
  const address = (await server.run()) as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    stop: () => server.close(),
  };
}

/**
 * Starts the emulator in a child process (see s3-emulator-main.ts). Same endpoint contract as
 * {@link startS3Emulator}; `stop()` ends the process and waits for it.
 */
export async function startS3EmulatorProcess(options: { dir: string; port?: number }): Promise<S3Emulator> {
  await mkdir(options.dir, { recursive: true });
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(__dirname, 's3-emulator-main.ts'),
      '--dir',
      options.dir,
      '--port',
      String(options.port ?? 0),
    ],
    {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
    },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const endpoint = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`S3 emulator did not start in 30 s: ${stderr}`)), 30_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) {
        clearTimeout(timer);
        resolve((JSON.parse(line) as { endpoint: string }).endpoint);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`S3 emulator exited with ${code}: ${stderr}`));
    });
  });
  return {
    endpoint,
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** S3 client settings for the emulator: path-style, fixed credentials, checksums only when required. */
export function localS3ClientConfig(endpoint: string): S3ClientConfig {
  return {
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  };
}
