/**
 * The local Lambda runtime's containers: a bundle loads through V8's code cache once an earlier
 * container wrote it, runs the same, and its stack frames still name the original sources.
 */
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { buildSync } from 'esbuild';
import type { LocalFunction } from '../../../infra/local/assembly/deployment';
import { LambdaInvocationError, LocalLambdaFunction } from '../../../infra/local/lambda/local-function';

const SOURCE = `
export async function handler(event: { fail?: boolean; n: number }) {
  if (event.fail) explode(event.n);
  return { doubled: event.n * 2, pid: process.pid };
}
function explode(n: number): never {
  throw new RangeError(\`no \${n}\`);
}
`;

describe('local Lambda containers', () => {
  let dir: string;
  let codeDir: string;
  let cacheDir: string;
  const functions: LocalLambdaFunction[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'strata-container-'));
    codeDir = path.join(dir, 'asset');
    cacheDir = path.join(dir, 'cache');
    const entry = path.join(dir, 'handler.ts');
    await writeFile(entry, SOURCE);
    buildSync({
      entryPoints: [entry],
      bundle: true,
      platform: 'node',
      format: 'cjs',
      minify: true,
      sourcemap: true,
      outfile: path.join(codeDir, 'index.js'),
      logLevel: 'silent',
    });
  });

  afterAll(async () => {
    for (const fn of functions) await fn.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** The cache files, once the first appears (renamed into place whole), or none after 10 s. */
  async function cacheFiles(): Promise<string[]> {
    for (let waited = 0; ; waited += 50) {
      const files = await readdir(cacheDir).catch(() => [] as string[]);
      const written = files.filter((f) => f.endsWith('.v8'));
      if (written.length > 0 || waited >= 10_000) return written;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  function start(withCache: boolean): LocalLambdaFunction {
    const fn: LocalFunction = {
      logicalId: 'Doubler',
      name: 'Strata-Doubler-TEST',
      arn: 'arn:aws:lambda:us-east-1:000000000000:function:Strata-Doubler-TEST',
      roleArn: 'arn:aws:iam::000000000000:role/doubler',
      handler: 'index.handler',
      timeoutSeconds: 10,
      memoryMb: 128,
      environment: {},
      codeDir,
    };
    const local = new LocalLambdaFunction({
      fn,
      environment: { NODE_OPTIONS: '--enable-source-maps' },
      logFile: path.join(dir, 'logs', 'doubler.log'),
      ...(withCache ? { codeCacheDir: cacheDir } : {}),
    });
    functions.push(local);
    return local;
  }

  it('compiles and writes the cache in the first container, loads it in the next, and answers the same', async () => {
    const first = start(true);
    await expect(first.invoke({ n: 21 })).resolves.toMatchObject({ doubled: 42 });
    expect(first.codeCache).toEqual({ loaded: 0, compiled: 1 });
    // The container writes the cache after it answered (the answer is not held up by it).
    expect(await cacheFiles()).toHaveLength(1);

    const second = start(true);
    const answer = (await second.invoke({ n: 5 })) as { doubled: number; pid: number };
    expect(answer.doubled).toBe(10);
    expect(second.codeCache).toEqual({ loaded: 1, compiled: 0 });
  });

  it('maps stack frames of a cached bundle to the original source, as Node does for its own loader', async () => {
    const traces: string[][] = [];
    for (const withCache of [true, false]) {
      const error = await start(withCache)
        .invoke({ fail: true, n: 7 })
        .catch((e: unknown) => e);
      expect(error).toBeInstanceOf(LambdaInvocationError);
      expect((error as LambdaInvocationError).errorType).toBe('RangeError');
      traces.push((error as LambdaInvocationError).trace.filter((l) => l.includes('handler.ts')));
    }
    const [cached, plain] = traces;
    expect(cached![0]).toMatch(/at explode \(.*handler\.ts:7:9\)/);
    expect(cached).toEqual(plain);
  });
});
