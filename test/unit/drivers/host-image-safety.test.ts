/**
 * Defence in depth on the host: `fetchImage` (template install onto a pool, migration import)
 * inspects the downloaded file with the same rules as the control plane and refuses a hostile image
 * before any qemu-img runs on it; every qemu-img call it makes names the format with `-f`.
 *
 * `child_process.spawn` (how ../sdk/qemu.ts starts qemu-img) is wrapped to record each qemu-img
 * argv and still run the real binary, so the test sees exactly which qemu-img commands ran.
 */
import childProcess from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nfsHostOperations } from '../../../drivers/nfs/host-ops.js';
import { FormatMismatchError, UnsafeImageError } from '../../../drivers/sdk/image-inspect.js';
import { createTestDriverContext } from '../../../drivers/sdk/testing.js';
import type { HostOperationContext } from '../../../drivers/sdk/types.js';
import { type BuiltImage, buildHostileImages, buildSafeImages } from '../../support/hostile-images.js';
import { type ImageServer, startImageServer } from '../../support/image-server.js';

let dir: string;
let share: string;
let server: ImageServer;
let hostile: BuiltImage[];
let safe: BuiltImage[];
const calls: string[] = [];
const realSpawn = childProcess.spawn;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'strata-host-safety-'));
  share = join(dir, 'share');
  await Promise.all([mkdir(share), mkdir(join(dir, 'images'))]);
  hostile = await buildHostileImages(join(dir, 'images'));
  safe = await buildSafeImages(join(dir, 'images'));
  server = await startImageServer();
  for (const image of [...hostile, ...safe]) {
    server.serve(`/${encodeURIComponent(image.name)}`, { kind: 'file', path: image.path });
  }
  jest.spyOn(childProcess, 'spawn').mockImplementation(((
    command: string,
    args: string[],
    options: object,
  ) => {
    if (command === 'qemu-img') calls.push(args.join(' '));
    return realSpawn(command, args, options);
  }) as typeof childProcess.spawn);
}, 120_000);

afterAll(async () => {
  jest.restoreAllMocks();
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  calls.length = 0;
});

async function qemuCalls(): Promise<string[]> {
  return calls;
}

function context(jobId: string): HostOperationContext {
  const base = createTestDriverContext();
  // `storage` is what a host's own configuration allows; this test's share is the one root.
  const ctx = {
    jobId,
    hostId: 'host-1',
    workDir: join(dir, 'work'),
    logger: base.logger,
    progress: () => undefined,
    signal: new AbortController().signal,
    storage: { confineMount: async () => undefined, listLimits: { maxEntries: 10_000, maxDepth: 16 } },
  };
  return ctx as unknown as HostOperationContext;
}

/** The host's source formats: vmdk is not one (see NfsSourceFormatSchema). */
const hostFormat = (image: BuiltImage) => (image.declared === 'vmdk' ? undefined : image.declared);

async function fetchImage(image: BuiltImage, jobId: string) {
  const operation = nfsHostOperations.operations.fetchImage!;
  const args = operation.args.parse({
    mountPath: share,
    path: `templates/${jobId}.qcow2`,
    url: server.url(`/${encodeURIComponent(image.name)}`),
    sourceFormat: hostFormat(image),
    targetFormat: 'qcow2',
  });
  return operation.run(args, context(jobId));
}

describe('fetchImage on the host', () => {
  it('refuses every hostile image it may be asked to install before qemu-img runs, leaving nothing', async () => {
    const candidates = hostile.filter((image) => hostFormat(image) !== undefined);
    expect(candidates.length).toBeGreaterThanOrEqual(10);
    for (const [index, image] of candidates.entries()) {
      const outcome = await fetchImage(image, `job-h${index}`).then(
        () => 'installed',
        (error: unknown) => {
          if (error instanceof FormatMismatchError) return 'mismatch';
          if (error instanceof UnsafeImageError) return error.reason;
          throw error;
        },
      );
      expect({ image: image.name, outcome, qemu: await qemuCalls() }).toEqual({
        image: image.name,
        outcome: image.refusal,
        qemu: [],
      });
    }
    expect(await readdir(join(share, 'templates'))).toEqual([]);
  });

  it('installs safe images, naming the format in every qemu-img call', async () => {
    const candidates = safe.filter(
      (image) => hostFormat(image) !== undefined && !/UDF|hybrid|GPT/.test(image.name),
    );
    for (const [index, image] of candidates.slice(0, 6).entries()) {
      const result = await fetchImage(image, `job-s${index}`);
      expect(result).toMatchObject({ format: 'qcow2' });
      const calls = await qemuCalls();
      expect(calls.length).toBeGreaterThan(0);
      for (const call of calls)
        expect({ image: image.name, call }).toEqual({
          image: image.name,
          call: expect.stringMatching(/ -f [a-z0-9]+ /),
        });
      calls.length = 0;
    }
  });
});
