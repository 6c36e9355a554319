/**
 * The conformance kit: one jest suite every provider runs against real (or emulated) storage, so
 * that "a driver" means the same thing whoever wrote it (cdk-nag's shared rule harness is the
 * model). Call {@link describeDriverConformance} from a `*.test.ts` file; it declares the tests.
 *
 * It uses jest's globals (`describe`, `it`, `expect`, `beforeAll`, `afterAll`) and is therefore not
 * re-exported from the SDK index: import it from `drivers/sdk/conformance.js` in tests only.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  DriverConflictError,
  DriverInputError,
  DuplicateProviderError,
  ObjectNotFoundError,
  UnsupportedOperationError,
} from './errors.js';
import { ProviderRegistry } from './registry.js';
import {
  type CreateResult,
  type DataObjectKind,
  type DataObjectRef,
  type DataStoreInfo,
  type DataStoreProvider,
  type DriverContext,
  type HostInfo,
  type ImageFormat,
  type ImageStoreDriver,
  isImageStoreDriver,
  isPrimaryDriver,
} from './types.js';

/** What a provider's test hands the kit. */
export interface ConformanceFixture {
  provider: DataStoreProvider;
  /** A store of this provider, ready to be initialised. */
  store: DataStoreInfo;
  /** A second store of the same provider for copies; the kit copies within `store` without it. */
  secondStore?: DataStoreInfo;
  /** A context whose `host` runs this provider's host operations (see `createInProcessHostInvoker`). */
  ctx: DriverContext;
  /** Hosts that reach the stores; the first one does the data-plane work. At least one when `needsHost`. */
  hosts: HostInfo[];
  /** The guest-visible bytes of an object (for disk images: the raw content, not the container). */
  readObject(store: DataStoreInfo, path: string): Promise<Buffer>;
  /** Changes an object's content; required for snapshot tests, used to make copies non-trivial. */
  mutateObject?(store: DataStoreInfo, path: string): Promise<void>;
  /** Kind of the objects the kit creates; default `volume` for primary stores, `template` otherwise. */
  objectKind?: DataObjectKind;
  /** Format of the objects the kit creates; default `qcow2` for primary stores, `raw` otherwise. */
  objectFormat?: ImageFormat;
  /** Size of created objects, default 1 MiB. */
  sizeBytes?: number;
  /** Releases what the fixture started (emulators, temp dirs). */
  teardown?(): Promise<void>;
  /**
   * Image-store calls the storage behind the fixture cannot do (an emulator's gaps, never a real
   * service's). The kit then expects {@link UnsupportedOperationError} from each of them and skips
   * only the checks that need them. See {@link ImageStoreGap}.
   */
  imageStoreGaps?: ImageStoreGap[];
  /** Bytes the image-store section streams; default 10 MiB + 12,345 (several parts, an odd last one). */
  imageStoreStreamBytes?: number;
  /**
   * A template the provider's {@link TemplateInstallStrategy} can install, served at an http(s) URL
   * a host can GET (a local server in tests, as a presigned image-store URL would be). The
   * template-install checks run only when the provider has a strategy and the fixture gives this.
   */
  templateSource?: TemplateSourceFixture;
}

/**
 * A template for the template-install checks.
 *
 * @example
 * const templateSource: TemplateSourceFixture = {
 *   url: `http://127.0.0.1:${port}/t.qcow2`, format: 'qcow2', sha256, virtualSizeBytes: 2 << 20,
 * };
 */
export interface TemplateSourceFixture {
  url: string;
  format: ImageFormat;
  /** sha256 (hex) of the bytes behind `url`. */
  sha256?: string;
  virtualSizeBytes: number;
}

/**
 * An {@link ImageStoreDriver} call a fixture's storage lacks. s3rver 3.7, for instance, answers
 * AbortMultipartUpload with 405 and ListMultipartUploads with 501.
 *
 * @example
 * const gaps: ImageStoreGap[] = ['abortUpload', 'listUploads'];
 */
export type ImageStoreGap = 'abortUpload' | 'listUploads';

/** Options of {@link describeDriverConformance}. */
export interface ConformanceOptions {
  /** Per-test timeout, default 60 s. */
  timeoutMs?: number;
}

/**
 * Declares the conformance suite for one provider. `setup` runs once before the tests.
 *
 * @example
 * // test/conformance/acme.conformance.test.ts
 * describeDriverConformance('acme', async () => ({
 *   provider: createAcmeProvider(),
 *   store, secondStore, hosts, ctx,
 *   readObject: (store, path) => readFile(join(root, path)),
 * }));
 */
export function describeDriverConformance(
  name: string,
  setup: () => Promise<ConformanceFixture>,
  options: ConformanceOptions = {},
): void {
  const timeout = options.timeoutMs ?? 60_000;

  describe(`${name} driver conformance`, () => {
    let fx: ConformanceFixture;
    let primary = false;
    let hostId: string | undefined;
    const run = `c${randomUUID().slice(0, 8)}`;
    const ref = (id: string, extra: Partial<DataObjectRef> = {}): DataObjectRef => ({
      kind: fx.objectKind ?? (primary ? 'volume' : 'template'),
      id: `${run}-${id}`,
      format: fx.objectFormat ?? (primary ? 'qcow2' : 'raw'),
      ...extra,
    });
    const size = () => fx.sizeBytes ?? 1024 * 1024;
    const host = (): HostInfo => {
      const first = fx.hosts[0];
      if (!first) throw new Error('the fixture needs at least one host');
      return first;
    };
    const create = (id: string, sizeBytes = size(), store = fx.store) =>
      fx.provider.driver.createAsync({ store, ctx: fx.ctx, hostId, object: ref(id), sizeBytes });
    const list = (store = fx.store) => fx.provider.driver.listObjects({ store, ctx: fx.ctx, hostId });
    const withPath = (id: string, created: CreateResult) => ref(id, { path: created.path });

    beforeAll(async () => {
      fx = await setup();
      primary = fx.store.role === 'primary';
      hostId = fx.provider.driver.getCapabilities().needsHost ? host().id : undefined;
    }, timeout);

    afterAll(async () => {
      await fx?.teardown?.();
    }, timeout);

    describe('registration', () => {
      it('registers under a kebab-case name and refuses a second registration', () => {
        const registry = new ProviderRegistry();
        registry.register(fx.provider);
        expect(registry.get(fx.provider.name)).toBe(fx.provider);
        expect(() => registry.register(fx.provider)).toThrow(DuplicateProviderError);
      });

      it("accepts the fixture store's details and serves its role", () => {
        expect(fx.provider.detailsSchema.safeParse(fx.store.details).success).toBe(true);
        expect(fx.provider.roles).toContain(fx.store.role);
      });
    });

    describe('lifecycle', () => {
      it(
        'initialises the stores and attaches them to the hosts',
        async () => {
          for (const store of [fx.store, fx.secondStore].filter((s): s is DataStoreInfo => s !== undefined)) {
            const result = await fx.provider.lifecycle.initialize({ store, ctx: fx.ctx });
            if (result.details) store.details = result.details;
            await fx.provider.lifecycle.attachCluster({ store, ctx: fx.ctx, hosts: fx.hosts });
            await fx.provider.lifecycle.attachHost({ store, ctx: fx.ctx, hosts: fx.hosts });
          }
        },
        timeout,
      );

      it(
        'initialising again is harmless',
        async () => {
          await expect(
            fx.provider.lifecycle.initialize({ store: fx.store, ctx: fx.ctx }),
          ).resolves.toBeDefined();
        },
        timeout,
      );
    });

    describe('create', () => {
      it(
        'creates an object that then appears in listObjects with its size',
        async () => {
          const created = await create('a');

          const listed = await list();

          expect(created.path).toBeTruthy();
          expect(listed).toContainEqual(
            expect.objectContaining({ path: created.path, sizeBytes: created.sizeBytes }),
          );
        },
        timeout,
      );

      it(
        'creating the same id again returns the same object or a conflict',
        async () => {
          const first = await create('b');

          const again = await create('b').catch((error: unknown) => error);

          if (again instanceof Error) expect(again).toBeInstanceOf(DriverConflictError);
          else expect(again).toEqual(expect.objectContaining({ path: first.path }));
        },
        timeout,
      );

      it(
        'creating the same id with another size is a conflict',
        async () => {
          await create('c');

          await expect(create('c', size() * 2)).rejects.toBeInstanceOf(DriverConflictError);
        },
        timeout,
      );
    });

    describe('copy', () => {
      it(
        'copies an object with equal content, or refuses with UnsupportedOperationError',
        async () => {
          const created = await create('src');
          if (fx.mutateObject) await fx.mutateObject(fx.store, created.path);
          const dstStore = fx.secondStore ?? fx.store;
          const src = { store: fx.store, object: withPath('src', created) };
          const dst = { store: dstStore, object: ref('dst') };

          if (!fx.provider.driver.canCopy(src, dst)) {
            await expect(
              fx.provider.driver.copyAsync({ src, dst, ctx: fx.ctx, hostId }),
            ).rejects.toBeInstanceOf(UnsupportedOperationError);
            return;
          }
          const copied = await fx.provider.driver.copyAsync({ src, dst, ctx: fx.ctx, hostId });
          const again = await fx.provider.driver.copyAsync({ src, dst, ctx: fx.ctx, hostId });

          expect(again.path).toBe(copied.path);
          const [a, b] = await Promise.all([
            fx.readObject(fx.store, created.path),
            fx.readObject(dstStore, copied.path),
          ]);
          expect(b.equals(a)).toBe(true);
          expect((await list(dstStore)).map((o) => o.path)).toContain(copied.path);
        },
        timeout,
      );
    });

    describe('resize', () => {
      it(
        'grows an object and refuses to shrink without allowShrink, or is unsupported',
        async () => {
          const created = await create('grow');
          const object = withPath('grow', created);
          const grow = () =>
            fx.provider.driver.resize({
              store: fx.store,
              ctx: fx.ctx,
              hostId,
              object,
              newSizeBytes: size() * 2,
            });

          const grown = await grow().catch((error: unknown) => error);

          if (grown instanceof Error) {
            expect(grown).toBeInstanceOf(UnsupportedOperationError);
            return;
          }
          expect((grown as CreateResult).virtualSizeBytes ?? (grown as CreateResult).sizeBytes).toBe(
            size() * 2,
          );
          await expect(
            fx.provider.driver.resize({ store: fx.store, ctx: fx.ctx, hostId, object, newSizeBytes: size() }),
          ).rejects.toBeInstanceOf(DriverInputError);
        },
        timeout,
      );
    });

    describe('snapshots', () => {
      it(
        'reverting a snapshot brings back the content it captured (primary drivers with snapshots)',
        async () => {
          const driver = fx.provider.driver;
          const capable = isPrimaryDriver(driver) && driver.getCapabilities().snapshots;
          if (!capable) {
            expect(driver.getCapabilities().snapshots).toBe(false);
            return;
          }
          if (!fx.mutateObject) throw new Error('snapshot conformance needs fixture.mutateObject');
          const created = await create('snapped');
          const object = withPath('snapped', created);
          const snapshot = ref('snap', { kind: 'snapshot' });
          const before = await fx.readObject(fx.store, created.path);

          await driver.takeSnapshot({ store: fx.store, ctx: fx.ctx, hostId, object, snapshot });
          await driver.takeSnapshot({ store: fx.store, ctx: fx.ctx, hostId, object, snapshot });
          await fx.mutateObject(fx.store, created.path);
          const changed = await fx.readObject(fx.store, created.path);
          await driver.revertSnapshot({ store: fx.store, ctx: fx.ctx, hostId, object, snapshot });
          const after = await fx.readObject(fx.store, created.path);

          expect(changed.equals(before)).toBe(false);
          expect(after.equals(before)).toBe(true);
        },
        timeout,
      );
    });

    describe('access', () => {
      it(
        'grants a host access to an existing object',
        async () => {
          const created = await create('shared');

          const access = await fx.provider.driver.grantAccess({
            store: fx.store,
            ctx: fx.ctx,
            host: host(),
            hostId,
            object: withPath('shared', created),
          });
          await fx.provider.driver.revokeAccess({
            store: fx.store,
            ctx: fx.ctx,
            host: host(),
            hostId,
            object: withPath('shared', created),
          });

          expect(access.uri).toMatch(/^[a-z][a-z0-9+.-]*:\/\//);
        },
        timeout,
      );
    });

    describe('delete', () => {
      it(
        'deletes an object, and deleting it again succeeds',
        async () => {
          const created = await create('doomed');
          const object = withPath('doomed', created);

          await fx.provider.driver.deleteAsync({ store: fx.store, ctx: fx.ctx, hostId, object });
          await fx.provider.driver.deleteAsync({ store: fx.store, ctx: fx.ctx, hostId, object });

          expect((await list()).map((o) => o.path)).not.toContain(created.path);
        },
        timeout,
      );
    });

    describe('template install (providers with a TemplateInstallStrategy)', () => {
      const strategyOf = () => fx.provider.templateInstall;
      const templateRef = (id = 'tpl'): DataObjectRef => ({
        kind: 'template',
        id: `${run}-${id}`,
        format: fx.templateSource?.format ?? 'qcow2',
      });
      // The strategy reads only the template's id and format: the source is `sourceUrl`, so the
      // fixture's store stands in for the image store here.
      const install = (extra: { expectedSha256?: string } = {}, id = 'tpl') =>
        strategyOf()!.install({
          template: { store: fx.secondStore ?? fx.store, object: templateRef(id) },
          pool: fx.store,
          ctx: fx.ctx,
          hostId: host().id,
          sourceUrl: fx.templateSource!.url,
          sourceFormat: fx.templateSource!.format,
          ...(fx.templateSource?.sha256 ? { expectedSha256: fx.templateSource.sha256 } : {}),
          ...extra,
        });
      const skip = () => !strategyOf() || !fx.templateSource;

      it(
        'installs a template once per pool; linked and full volumes read back its content',
        async () => {
          if (skip()) return;
          const source = fx.templateSource!;
          const cache = await install();
          const again = await install();
          const cacheRef = {
            store: fx.store,
            object: { ...templateRef(), format: cache.format, path: cache.path },
          };
          const volume = (id: string, mode?: 'linked' | 'full', sizeBytes = source.virtualSizeBytes) =>
            strategyOf()!.createVolume({
              cache: cacheRef,
              volume: ref(id),
              sizeBytes,
              ctx: fx.ctx,
              hostId: host().id,
              ...(mode ? { mode } : {}),
            });

          const linked = await volume('from-tpl-linked', undefined, source.virtualSizeBytes * 2);
          const linkedAgain = await volume('from-tpl-linked', undefined, source.virtualSizeBytes * 2);
          const full = await volume('from-tpl-full', 'full');
          const [tpl, linkedBytes, fullBytes] = await Promise.all([
            fx.readObject(fx.store, cache.path),
            fx.readObject(fx.store, linked.path),
            fx.readObject(fx.store, full.path),
          ]);

          expect(again).toEqual(cache);
          expect(cache.virtualSizeBytes ?? cache.sizeBytes).toBe(source.virtualSizeBytes);
          expect(linkedAgain.path).toBe(linked.path);
          expect(linked.virtualSizeBytes).toBe(source.virtualSizeBytes * 2);
          expect(linkedBytes.subarray(0, tpl.length).equals(tpl)).toBe(true);
          expect(linkedBytes.subarray(tpl.length).every((b) => b === 0)).toBe(true);
          expect(fullBytes.equals(tpl)).toBe(true);
          await expect(
            volume('too-small', undefined, Math.floor(source.virtualSizeBytes / 2)),
          ).rejects.toBeInstanceOf(DriverInputError);

          // A volume made from a template moves like any other: a copy reads the same.
          const dstStore = fx.secondStore ?? fx.store;
          const src = { store: fx.store, object: ref('from-tpl-linked', { path: linked.path }) };
          const dst = { store: dstStore, object: ref('from-tpl-moved') };
          if (fx.provider.driver.canCopy(src, dst)) {
            const moved = await fx.provider.driver.copyAsync({ src, dst, ctx: fx.ctx, hostId });
            expect((await fx.readObject(dstStore, moved.path)).equals(linkedBytes)).toBe(true);
          }
        },
        timeout,
      );

      it(
        'refuses a template whose bytes do not match the expected sha256',
        async () => {
          if (skip()) return;
          const error = await install({ expectedSha256: '0'.repeat(64) }, 'tpl-bad').catch((e: unknown) => e);

          expect(error).toMatchObject({ code: 'ChecksumMismatch', retryable: false });
        },
        timeout,
      );
    });

    describe('image store (drivers implementing ImageStoreDriver)', () => {
      const MiB = 1024 * 1024;
      const image = (): ImageStoreDriver | undefined =>
        isImageStoreDriver(fx.provider.driver) ? fx.provider.driver : undefined;
      const lacks = (call: ImageStoreGap) => fx.imageStoreGaps?.includes(call) ?? false;
      const streamBytes = () => fx.imageStoreStreamBytes ?? 10 * MiB + 12_345;
      const obj = (id: string) => ({ store: fx.store, ctx: fx.ctx, hostId, object: ref(id) });
      const pendingPaths = async (driver: ImageStoreDriver) =>
        (await driver.listUploads({ store: fx.store, ctx: fx.ctx })).map((u) => u.path);

      it(
        'writeStream stores the bytes; readStream, a range read and statObject give them back',
        async () => {
          const driver = image();
          if (!driver) return;
          const data = randomBytes(streamBytes());
          const progress: number[] = [];

          const written = await driver.writeStream({
            ...obj('streamed'),
            body: chunked(data, MiB),
            contentLength: data.length,
            onProgress: (bytes) => progress.push(bytes),
          });
          const whole = await driver.readStream(obj('streamed'));
          const wholeBytes = await collect(whole.body);
          const range = { start: 5 * MiB - 10, end: 5 * MiB + 100 };
          const part = await driver.readStream({ ...obj('streamed'), range });
          const partBytes = await collect(part.body);
          const stat = await driver.statObject(obj('streamed'));

          expect(written).toEqual(expect.objectContaining({ sizeBytes: data.length }));
          expect(written.path).toBeTruthy();
          expect(progress.at(-1)).toBe(data.length);
          expect(whole.sizeBytes).toBe(data.length);
          expect(wholeBytes.equals(data)).toBe(true);
          expect(part).toEqual(expect.objectContaining({ sizeBytes: 111, totalSizeBytes: data.length }));
          expect(partBytes.equals(data.subarray(range.start, range.end + 1))).toBe(true);
          expect(stat?.sizeBytes).toBe(data.length);
          await expect(driver.statObject(obj('never-written'))).resolves.toBeUndefined();
          await expect(driver.readStream(obj('never-written'))).rejects.toBeInstanceOf(ObjectNotFoundError);
        },
        timeout,
      );

      it(
        'a writeStream whose source fails mid-way leaves no object and no pending upload',
        async () => {
          const driver = image();
          if (!driver) return;
          const before = lacks('listUploads') ? [] : await pendingPaths(driver);

          const failed = driver.writeStream({
            ...obj('broken'),
            body: failingAfter(streamBytes() - 1024, MiB, new Error('source broke')),
          });

          await expect(failed).rejects.toThrow(/source broke/);
          await expect(driver.statObject(obj('broken'))).resolves.toBeUndefined();
          if (lacks('listUploads')) {
            // The storage cannot list uploads (s3rver); real S3 runs the check below.
            await expect(pendingPaths(driver)).rejects.toBeInstanceOf(UnsupportedOperationError);
            return;
          }
          const after = await pendingPaths(driver);
          expect(after.filter((p) => !before.includes(p))).toEqual([]);
        },
        timeout,
      );

      it(
        'a writeStream with a body shorter than contentLength, or aborted by its signal, leaves no object',
        async () => {
          const driver = image();
          if (!driver) return;
          const data = randomBytes(streamBytes());
          const controller = new AbortController();
          const aborting = chunked(data, MiB, (sent) => {
            if (sent > data.length / 2) controller.abort(new Error('operator cancelled'));
          });

          const short = driver.writeStream({
            ...obj('short'),
            body: chunked(data, MiB),
            contentLength: data.length + 1,
          });
          const aborted = driver.writeStream({
            ...obj('aborted'),
            body: aborting,
            signal: controller.signal,
          });

          await expect(short).rejects.toBeInstanceOf(DriverInputError);
          await expect(aborted).rejects.toThrow(/cancelled|abort/i);
          await expect(driver.statObject(obj('short'))).resolves.toBeUndefined();
          await expect(driver.statObject(obj('aborted'))).resolves.toBeUndefined();
        },
        timeout,
      );

      it(
        'a client PUTs parts to presigned URLs in parallel, then completeUpload assembles them',
        async () => {
          const driver = image();
          if (!driver) return;
          const data = randomBytes(11 * MiB + 7);

          const upload = await driver.createUpload({
            ...obj('uploaded'),
            sizeBytes: data.length,
            partSizeBytes: 5 * MiB,
          });
          const put = async (url: string, offset: number, size: number) => {
            const res = await fetch(url, {
              method: 'PUT',
              body: new Uint8Array(data.subarray(offset, offset + size)),
            });
            expect(res.status).toBe(200);
            return res.headers.get('etag') ?? '';
          };
          const etags = await Promise.all(upload.parts.map((p) => put(p.url, p.offset, p.sizeBytes)));
          // URLs can be presigned again (the first ones expired); a part PUT twice keeps the last.
          const [again] = await driver.presignUploadParts({
            ...obj('uploaded'),
            uploadId: upload.uploadId,
            sizeBytes: data.length,
            partSizeBytes: upload.partSizeBytes,
            partNumbers: [2],
          });
          etags[1] = await put(again!.url, again!.offset, again!.sizeBytes);
          const parts = etags.map((etag, i) => ({ partNumber: i + 1, etag })).reverse();
          const completed = await driver.completeUpload({
            ...obj('uploaded'),
            uploadId: upload.uploadId,
            parts,
            sizeBytes: data.length,
          });
          const stored = await collect((await driver.readStream(obj('uploaded'))).body);

          expect(upload.parts.map((p) => [p.partNumber, p.offset, p.sizeBytes])).toEqual([
            [1, 0, 5 * MiB],
            [2, 5 * MiB, 5 * MiB],
            [3, 10 * MiB, MiB + 7],
          ]);
          expect(upload.path).toBe(completed.path);
          expect(Date.parse(upload.expiresAt)).toBeGreaterThan(Date.now());
          expect(completed.sizeBytes).toBe(data.length);
          expect(stored.equals(data)).toBe(true);
        },
        timeout,
      );

      it('completeUpload refuses a part list with a gap or a duplicate before asking the storage', async () => {
        const driver = image();
        if (!driver) return;
        const complete = (parts: { partNumber: number; etag: string }[]) =>
          driver.completeUpload({ ...obj('bad-parts'), uploadId: 'no-such-upload', parts });

        await expect(complete([])).rejects.toBeInstanceOf(DriverInputError);
        await expect(complete([{ partNumber: 2, etag: '"a"' }])).rejects.toBeInstanceOf(DriverInputError);
        await expect(
          complete([
            { partNumber: 1, etag: '"a"' },
            { partNumber: 1, etag: '"b"' },
          ]),
        ).rejects.toBeInstanceOf(DriverInputError);
      });

      it(
        'abortUpload is idempotent, and listUploads shows an upload until it is aborted',
        async () => {
          const driver = image();
          if (!driver) return;
          const upload = await driver.createUpload({ ...obj('abandoned'), sizeBytes: 6 * MiB });
          const abort = () => driver.abortUpload({ ...obj('abandoned'), uploadId: upload.uploadId });

          if (lacks('abortUpload')) {
            // The storage cannot abort (s3rver answers 405): the driver says so instead of pretending.
            await expect(abort()).rejects.toBeInstanceOf(UnsupportedOperationError);
          } else {
            if (!lacks('listUploads')) {
              const pending = await driver.listUploads({ store: fx.store, ctx: fx.ctx });
              expect(pending).toContainEqual(
                expect.objectContaining({ path: upload.path, uploadId: upload.uploadId }),
              );
              const future = new Date(Date.now() + 60_000);
              const past = new Date(Date.now() - 3_600_000);
              expect(
                (await driver.listUploads({ store: fx.store, ctx: fx.ctx, olderThan: future })).map(
                  (u) => u.uploadId,
                ),
              ).toContain(upload.uploadId);
              expect(
                (await driver.listUploads({ store: fx.store, ctx: fx.ctx, olderThan: past })).map(
                  (u) => u.uploadId,
                ),
              ).not.toContain(upload.uploadId);
            }
            await abort();
            await abort();
          }
          if (lacks('listUploads')) {
            await expect(driver.listUploads({ store: fx.store, ctx: fx.ctx })).rejects.toBeInstanceOf(
              UnsupportedOperationError,
            );
            return;
          }
          const after = await driver.listUploads({ store: fx.store, ctx: fx.ctx });
          expect(after.map((u) => u.uploadId)).not.toContain(upload.uploadId);
        },
        timeout,
      );

      it(
        'presignGet gives a URL that fetches the object; presignPut a URL that stores one',
        async () => {
          const driver = image();
          if (!driver) return;
          const data = randomBytes(256 * 1024);
          await driver.writeStream({
            ...obj('served'),
            body: chunked(data, 64 * 1024),
            contentLength: data.length,
          });
          const manifest = Buffer.from(JSON.stringify({ id: 'served', sizeBytes: data.length }));

          const get = await driver.presignGet({ ...obj('served'), expiresSeconds: 300 });
          const fetched = Buffer.from(await (await fetch(get.url)).arrayBuffer());
          const put = await driver.presignPut({ ...obj('manifest'), expiresSeconds: 300 });
          const putStatus = (await fetch(put.url, { method: 'PUT', body: new Uint8Array(manifest) })).status;
          const stored = await collect((await driver.readStream(obj('manifest'))).body);

          expect(fetched.equals(data)).toBe(true);
          expect(Date.parse(get.expiresAt)).toBeGreaterThan(Date.now());
          expect(putStatus).toBe(200);
          expect(stored.equals(manifest)).toBe(true);
          await expect(driver.presignGet(obj('never-written'))).rejects.toBeInstanceOf(ObjectNotFoundError);
        },
        timeout,
      );

      it(
        'copyAsync between two stores (other bucket, other prefix) preserves the bytes',
        async () => {
          const driver = image();
          if (!driver || !fx.secondStore) return;
          const data = randomBytes(3 * MiB + 1);
          const written = await driver.writeStream({ ...obj('copied'), body: chunked(data, MiB) });
          const src = { store: fx.store, object: ref('copied', { path: written.path }) };
          const dst = { store: fx.secondStore, object: ref('copied') };
          if (!driver.canCopy(src, dst)) return;

          const copied = await driver.copyAsync({ src, dst, ctx: fx.ctx, hostId });
          const read = await driver.readStream({
            store: fx.secondStore,
            ctx: fx.ctx,
            hostId,
            object: ref('copied', { path: copied.path }),
          });

          expect(copied.sizeBytes).toBe(data.length);
          expect((await collect(read.body)).equals(data)).toBe(true);
        },
        timeout,
      );
    });

    describe('error mapping', () => {
      it('refuses an unsafe object id with DriverInputError', async () => {
        await expect(
          fx.provider.driver.createAsync({
            store: fx.store,
            ctx: fx.ctx,
            hostId,
            object: { ...ref('x'), id: '../escape' },
            sizeBytes: size(),
          }),
        ).rejects.toBeInstanceOf(DriverInputError);
      });

      it('refuses a path that leaves the store with DriverInputError', async () => {
        await expect(
          fx.provider.driver.deleteAsync({
            store: fx.store,
            ctx: fx.ctx,
            hostId,
            object: ref('y', { path: '../../etc/passwd' }),
          }),
        ).rejects.toBeInstanceOf(DriverInputError);
      });

      it('refuses a non-positive size with DriverInputError', async () => {
        await expect(create('zero', 0)).rejects.toBeInstanceOf(DriverInputError);
      });

      it(
        'reports a missing object as ObjectNotFoundError',
        async () => {
          await expect(
            fx.provider.driver.grantAccess({
              store: fx.store,
              ctx: fx.ctx,
              host: host(),
              hostId,
              object: ref('missing'),
            }),
          ).rejects.toBeInstanceOf(ObjectNotFoundError);
        },
        timeout,
      );
    });
  });
}

/** `data` as a stream of `chunkBytes` pieces; `onChunk` sees the running total before each push. */
function chunked(data: Buffer, chunkBytes: number, onChunk?: (sent: number) => void): Readable {
  let offset = 0;
  return new Readable({
    read() {
      onChunk?.(offset);
      if (offset >= data.length) {
        this.push(null);
        return;
      }
      const end = Math.min(data.length, offset + chunkBytes);
      const chunk = data.subarray(offset, end);
      offset = end;
      this.push(chunk);
    },
  });
}

/** Random bytes, `chunkBytes` at a time, then `error` once `bytes` were produced. */
function failingAfter(bytes: number, chunkBytes: number, error: Error): Readable {
  let sent = 0;
  return new Readable({
    read() {
      if (sent >= bytes) {
        this.destroy(error);
        return;
      }
      const n = Math.min(chunkBytes, bytes - sent);
      sent += n;
      this.push(randomBytes(n));
    },
  });
}

async function collect(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of body) chunks.push(Buffer.from(chunk as Uint8Array));
  return Buffer.concat(chunks);
}
