import { z } from 'zod';
import {
  BaseDataStoreDriver,
  BaseDataStoreLifeCycle,
  BasePrimaryDataStoreDriver,
} from '../../../drivers/sdk/base-driver.js';
import {
  DriverConflictError,
  DriverError,
  DriverInputError,
  DriverUnavailableError,
  HostOperationError,
  ObjectNotFoundError,
  UnsupportedOperationError,
} from '../../../drivers/sdk/errors.js';
import { createTestDriverContext } from '../../../drivers/sdk/testing.js';
import type {
  AccessResult,
  CreateOptions,
  CreateResult,
  DataStoreInfo,
  DriverCapabilities,
  Logger,
  ObjectOptions,
  StoredObject,
  StoreOptions,
} from '../../../drivers/sdk/types.js';

class FakeDriver extends BaseDataStoreDriver {
  readonly providerName = 'acme';
  needsHost = false;
  readonly create = jest.fn(
    async (o: CreateOptions): Promise<CreateResult> => ({ path: o.object.id, sizeBytes: 1 }),
  );
  readonly delete = jest.fn(async (_o: ObjectOptions): Promise<void> => {});

  getCapabilities(): DriverCapabilities {
    return { snapshots: false, linkedClones: false, serverSideCopy: false, needsHost: this.needsHost };
  }
  protected doCreate(o: CreateOptions) {
    return this.create(o);
  }
  protected doDelete(o: ObjectOptions) {
    return this.delete(o);
  }
  protected async doCopy(): Promise<CreateResult> {
    return { path: 'copy', sizeBytes: 1 };
  }
  protected async doListObjects(): Promise<StoredObject[]> {
    return [];
  }
  protected async doGrantAccess(): Promise<AccessResult> {
    return { uri: 'acme://x' };
  }
  protected async doRevokeAccess(): Promise<void> {}
}

class FakePrimaryDriver extends BasePrimaryDataStoreDriver {
  readonly providerName = 'acme';
  readonly snap = jest.fn(async (): Promise<CreateResult> => ({ path: 'v@s', sizeBytes: 1 }));
  getCapabilities(): DriverCapabilities {
    return { snapshots: true, linkedClones: false, serverSideCopy: false, needsHost: false };
  }
  protected async doCreate(): Promise<CreateResult> {
    return { path: 'v', sizeBytes: 1 };
  }
  protected async doDelete(): Promise<void> {}
  protected async doCopy(): Promise<CreateResult> {
    return { path: 'v', sizeBytes: 1 };
  }
  protected async doListObjects(): Promise<StoredObject[]> {
    return [];
  }
  protected async doGrantAccess(): Promise<AccessResult> {
    return { uri: 'acme://v' };
  }
  protected async doRevokeAccess(): Promise<void> {}
  protected doTakeSnapshot() {
    return this.snap();
  }
  protected async doRevertSnapshot(): Promise<void> {}
}

const store: DataStoreInfo = {
  id: 'ds-1',
  name: 'acme-1',
  provider: 'acme',
  role: 'primary',
  scope: { type: 'zone', zoneId: 'z1' },
  details: { portal: 'p' },
  capacityBytes: 0,
};

function recordingLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const log = (m: string) => {
    lines.push(m);
  };
  return { lines, debug: log, info: log, warn: log, error: log };
}

describe('BaseDataStoreDriver', () => {
  const ctx = createTestDriverContext({ jobId: 'job-1' });
  const volume = { kind: 'volume' as const, id: 'vol-1' };

  describe('createAsync', () => {
    it('calls the hook with validated input and logs the outcome', async () => {
      const driver = new FakeDriver();
      const logger = recordingLogger();

      const result = await driver.createAsync({
        store,
        ctx: { ...ctx, logger },
        object: volume,
        sizeBytes: 1024,
      });

      expect(result).toEqual({ path: 'vol-1', sizeBytes: 1 });
      expect(driver.create).toHaveBeenCalledTimes(1);
      expect(logger.lines).toContain('acme.create done');
    });

    it.each([
      ['an unsafe id', { object: { kind: 'volume', id: '../x' } }],
      ['an id with a slash', { object: { kind: 'volume', id: 'a/b' } }],
      ['an unknown kind', { object: { kind: 'disk', id: 'v' } }],
      ['a path leaving the store', { object: { kind: 'volume', id: 'v', path: 'a/../../etc' } }],
      ['an absolute path', { object: { kind: 'volume', id: 'v', path: '/etc/passwd' } }],
      ['a zero size', { sizeBytes: 0 }],
      ['a fractional size', { sizeBytes: 1.5 }],
      ['a negative size', { sizeBytes: -1 }],
      ['a store of another provider', { store: { ...store, provider: 'other' } }],
      ['an unknown format', { object: { kind: 'volume', id: 'v', format: 'vdi' } }],
    ])('refuses %s with DriverInputError before calling the hook', async (_label, override) => {
      const driver = new FakeDriver();

      const attempt = driver.createAsync({
        store,
        ctx,
        object: volume,
        ...(override as object),
      } as CreateOptions);

      await expect(attempt).rejects.toBeInstanceOf(DriverInputError);
      expect(driver.create).not.toHaveBeenCalled();
    });

    it('requires a hostId when the driver needs a host', async () => {
      const driver = new FakeDriver();
      driver.needsHost = true;

      await expect(driver.createAsync({ store, ctx, object: volume })).rejects.toThrow(/needs a hostId/);
      await expect(driver.createAsync({ store, ctx, object: volume, hostId: 'h1' })).resolves.toBeDefined();
    });

    it('wraps an unknown failure into DriverError keeping the cause', async () => {
      const driver = new FakeDriver();
      const cause = new TypeError('undefined is not a function');
      driver.create.mockRejectedValueOnce(cause);

      const error = await driver.createAsync({ store, ctx, object: volume }).catch((e: unknown) => e);

      expect(error).toBeInstanceOf(DriverError);
      expect((error as DriverError).code).toBe('DriverFailure');
      expect((error as DriverError).cause).toBe(cause);
    });

    it('maps network trouble to a retryable DriverUnavailableError', async () => {
      const driver = new FakeDriver();
      driver.create.mockRejectedValueOnce(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }));

      await expect(driver.createAsync({ store, ctx, object: volume })).rejects.toBeInstanceOf(
        DriverUnavailableError,
      );
    });

    it("turns a host's Conflict report back into DriverConflictError", async () => {
      const driver = new FakeDriver();
      driver.create.mockRejectedValueOnce(
        new HostOperationError({ code: 'Conflict', message: 'taken', retryable: false }),
      );

      await expect(driver.createAsync({ store, ctx, object: volume })).rejects.toBeInstanceOf(
        DriverConflictError,
      );
    });
  });

  describe('deleteAsync', () => {
    it('succeeds when the hook says the object is already gone', async () => {
      const driver = new FakeDriver();
      driver.delete.mockRejectedValueOnce(new ObjectNotFoundError('gone'));

      await expect(driver.deleteAsync({ store, ctx, object: volume })).resolves.toBeUndefined();
    });

    it('succeeds when a host reports ObjectNotFound', async () => {
      const driver = new FakeDriver();
      driver.delete.mockRejectedValueOnce(
        new HostOperationError({ code: 'ObjectNotFound', message: 'gone', retryable: false }),
      );

      await expect(driver.deleteAsync({ store, ctx, object: volume })).resolves.toBeUndefined();
    });

    it('still fails on any other error', async () => {
      const driver = new FakeDriver();
      driver.delete.mockRejectedValueOnce(new DriverConflictError('in use'));

      await expect(driver.deleteAsync({ store, ctx, object: volume })).rejects.toBeInstanceOf(
        DriverConflictError,
      );
    });
  });

  describe('resize', () => {
    it('is unsupported unless the driver implements doResize', async () => {
      await expect(
        new FakeDriver().resize({ store, ctx, object: volume, newSizeBytes: 10 }),
      ).rejects.toBeInstanceOf(UnsupportedOperationError);
    });
  });

  describe('copyAsync', () => {
    it('refuses a copy where neither end belongs to the driver', async () => {
      const foreign = { ...store, provider: 'other' };

      await expect(
        new FakeDriver().copyAsync({
          src: { store: foreign, object: volume },
          dst: { store: foreign, object: volume },
          ctx,
        }),
      ).rejects.toThrow(/two foreign stores/);
    });
  });
});

describe('BasePrimaryDataStoreDriver', () => {
  const ctx = createTestDriverContext();

  it('takes a snapshot through the hook', async () => {
    const driver = new FakePrimaryDriver();

    const result = await driver.takeSnapshot({
      store,
      ctx,
      object: { kind: 'volume', id: 'v' },
      snapshot: { kind: 'snapshot', id: 's' },
    });

    expect(result.path).toBe('v@s');
  });

  it('refuses a snapshot ref that is not of kind snapshot', async () => {
    const driver = new FakePrimaryDriver();

    await expect(
      driver.takeSnapshot({
        store,
        ctx,
        object: { kind: 'volume', id: 'v' },
        snapshot: { kind: 'volume', id: 's' },
      }),
    ).rejects.toBeInstanceOf(DriverInputError);
    expect(driver.snap).not.toHaveBeenCalled();
  });
});

describe('BaseDataStoreLifeCycle', () => {
  class FakeLifeCycle extends BaseDataStoreLifeCycle {
    readonly seen: StoreOptions[] = [];
    constructor() {
      super('acme', z.object({ portal: z.string().min(1), port: z.string().default('3260') }).strict());
    }
    protected override async onInitialize(options: StoreOptions) {
      this.seen.push(options);
      return {};
    }
  }
  const ctx = createTestDriverContext();

  it('hands the hook normalised details and returns them for persisting', async () => {
    const lifecycle = new FakeLifeCycle();

    const result = await lifecycle.initialize({ store, ctx });

    expect(result.details).toEqual({ portal: 'p', port: '3260' });
    expect(lifecycle.seen[0]?.store.details).toEqual({ portal: 'p', port: '3260' });
  });

  it('names the bad field when details are invalid', async () => {
    const lifecycle = new FakeLifeCycle();

    const error = await lifecycle
      .initialize({ store: { ...store, details: { portal: '' } }, ctx })
      .catch((e) => e);

    expect(error).toBeInstanceOf(DriverInputError);
    expect((error as DriverInputError).context.field).toBe('details.portal');
  });

  it('does nothing, successfully, for steps the provider does not override', async () => {
    await expect(new FakeLifeCycle().attachCluster({ store, ctx, hosts: [] })).resolves.toBeUndefined();
  });
});
