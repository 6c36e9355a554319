/**
 * The conformance kit: one jest suite every provider runs against real (or emulated) storage, so
 * that "a driver" means the same thing whoever wrote it (cdk-nag's shared rule harness is the
 * model). Call {@link describeDriverConformance} from a `*.test.ts` file; it declares the tests.
 *
 * It uses jest's globals (`describe`, `it`, `expect`, `beforeAll`, `afterAll`) and is therefore not
 * re-exported from the SDK index: import it from `drivers/sdk/conformance.js` in tests only.
 */
import { randomUUID } from 'node:crypto';
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
}

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
