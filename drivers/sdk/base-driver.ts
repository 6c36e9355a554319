/**
 * Base classes that own the public lifecycle of a driver (STYLE.md 1, the Powertools
 * `BasePersistenceLayer` pattern): every public method validates its input, logs, runs the
 * subclass's protected hook, and turns whatever the hook threw into a {@link DriverError}. Deletes
 * are idempotent here once, so no driver can forget it.
 */
import { ZodError, type ZodType } from 'zod';
import {
  DriverError,
  type DriverErrorContext,
  DriverInputError,
  DriverUnavailableError,
  driverErrorFromHostError,
  HostOperationError,
  ObjectNotFoundError,
  UnsupportedOperationError,
} from './errors.js';
import {
  type AccessOptions,
  type AccessResult,
  type AttachOptions,
  type CopyEndpoint,
  type CopyOptions,
  type CreateOptions,
  type CreateResult,
  DataObjectKind,
  type DataObjectRef,
  type DataStoreDriver,
  type DataStoreInfo,
  type DataStoreLifeCycle,
  type DriverCapabilities,
  type DriverContext,
  ImageFormat,
  type InitializeResult,
  type ListOptions,
  type ObjectOptions,
  type PrimaryDataStoreDriver,
  type ResizeOptions,
  type SnapshotOptions,
  type StoredObject,
  type StoreOptions,
} from './types.js';
import { assertPositiveSize, assertRelativePath, assertSafeId } from './validation.js';

const KINDS = new Set<string>(Object.values(DataObjectKind));
const FORMATS = new Set<string>(Object.values(ImageFormat));
const TRANSIENT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'EPIPE',
  'EHOSTUNREACH',
]);

/**
 * Turns anything a hook threw into a {@link DriverError}: driver errors pass through, a host's
 * report becomes the typed error it encodes, zod failures are input errors, network trouble and
 * 5xx/429 answers are retryable, the rest is a non-retryable `DriverFailure` keeping the original
 * as `cause`.
 *
 * @example
 * try { await s3.send(cmd); } catch (e) { throw toDriverError(e, 'put probe', { bucket }); }
 */
export function toDriverError(
  error: unknown,
  operation: string,
  context: DriverErrorContext = {},
): DriverError {
  if (error instanceof HostOperationError) {
    const typed = driverErrorFromHostError(error.hostError, context, error);
    return typed;
  }
  if (error instanceof DriverError) return error;
  if (error instanceof ZodError) {
    const issue = error.issues[0];
    const field = issue?.path.join('.') ?? '';
    return new DriverInputError(`${operation}: invalid ${field || 'input'}: ${issue?.message ?? 'invalid'}`, {
      cause: error,
      context: { ...context, field },
    });
  }
  const message = error instanceof Error ? error.message : String(error);
  if (isTransient(error)) {
    return new DriverUnavailableError(`${operation}: ${message}`, { cause: error, context });
  }
  return new DriverError(`${operation} failed: ${message}`, { cause: error, context });
}

function isTransient(error: unknown): boolean {
  if (typeof error !== 'object' || error === null) return false;
  const e = error as {
    code?: unknown;
    name?: unknown;
    $retryable?: unknown;
    $metadata?: { httpStatusCode?: number };
  };
  // The AWS SDK marks throttling and transient service errors itself.
  if (e.$retryable) return true;
  if (typeof e.code === 'string' && TRANSIENT_CODES.has(e.code)) return true;
  if (e.name === 'TimeoutError') return true;
  const status = e.$metadata?.httpStatusCode;
  return typeof status === 'number' && (status >= 500 || status === 429);
}

/** Logs around `fn` and wraps its failure; shared by drivers and lifecycles. */
async function runLogged<T>(
  ctx: DriverContext | undefined,
  operation: string,
  fields: DriverErrorContext,
  fn: () => Promise<T>,
): Promise<T> {
  const started = Date.now();
  ctx?.logger.debug(`${operation} started`, fields);
  try {
    const result = await fn();
    ctx?.logger.info(`${operation} done`, { ...fields, durationMs: Date.now() - started });
    return result;
  } catch (error) {
    const wrapped = toDriverError(error, operation, fields);
    // A handover to a resuming retry is not a failure.
    const level = wrapped.retryable ? 'warn' : 'error';
    ctx?.logger[level](`${operation} failed`, {
      ...fields,
      durationMs: Date.now() - started,
      code: wrapped.code,
      error: wrapped.message,
    });
    throw wrapped;
  }
}

function validateStore(store: DataStoreInfo | undefined, field: string): asserts store is DataStoreInfo {
  if (!store || typeof store !== 'object')
    throw new DriverInputError(`${field} is required`, { context: { field } });
  assertSafeId(store.id, `${field}.id`);
  if (!store.details || typeof store.details !== 'object') {
    throw new DriverInputError(`${field}.details is required`, { context: { field: `${field}.details` } });
  }
}

function validateObject(object: DataObjectRef | undefined, field: string): asserts object is DataObjectRef {
  if (!object || typeof object !== 'object') {
    throw new DriverInputError(`${field} is required`, { context: { field } });
  }
  if (!KINDS.has(object.kind)) {
    throw new DriverInputError(`${field}.kind must be one of ${[...KINDS].join(', ')}`, {
      context: { field: `${field}.kind` },
    });
  }
  assertSafeId(object.id, `${field}.id`);
  if (object.path !== undefined) assertRelativePath(object.path, `${field}.path`);
  if (object.format !== undefined && !FORMATS.has(object.format)) {
    throw new DriverInputError(`${field}.format must be one of ${[...FORMATS].join(', ')}`, {
      context: { field: `${field}.format` },
    });
  }
  if (object.sizeBytes !== undefined) assertPositiveSize(object.sizeBytes, `${field}.sizeBytes`);
  if (object.parent !== undefined) validateObject(object.parent, `${field}.parent`);
}

function objectFields(store: DataStoreInfo, object: DataObjectRef): DriverErrorContext {
  return { storeId: store.id, provider: store.provider, kind: object.kind, objectId: object.id };
}

/**
 * The base every data-plane driver extends. Implement the `do*` hooks; the public methods validate,
 * log, wrap errors and make deletes idempotent around them.
 *
 * Hooks receive validated input: ids are safe, `object.path` (when set) is a relative path without
 * `..`, sizes are positive integers, and `hostId` is present when the driver `needsHost`.
 *
 * @example
 * class AcmeDriver extends BaseDataStoreDriver {
 *   readonly providerName = 'acme';
 *   getCapabilities() { return { snapshots: false, linkedClones: false, serverSideCopy: false, needsHost: false }; }
 *   protected async doCreate({ object, sizeBytes }: CreateOptions) { return { path: object.id, sizeBytes: sizeBytes ?? 0 }; }
 *   protected async doDelete() {}
 *   protected async doCopy(): Promise<CreateResult> { throw new UnsupportedOperationError('no copy'); }
 *   protected async doListObjects() { return []; }
 *   protected async doGrantAccess({ object }: AccessOptions) { return { uri: `acme://${object.id}` }; }
 *   protected async doRevokeAccess() {}
 * }
 */
export abstract class BaseDataStoreDriver implements DataStoreDriver {
  /** The provider this driver belongs to; stores of other providers are refused. */
  abstract readonly providerName: string;

  abstract getCapabilities(): DriverCapabilities;

  /** Creates the object; should be idempotent for the same id and size. */
  protected abstract doCreate(options: CreateOptions): Promise<CreateResult>;
  /** Deletes the object; may throw {@link ObjectNotFoundError}, which the base treats as success. */
  protected abstract doDelete(options: ObjectOptions): Promise<void>;
  /** Copies between two stores; called only when one end belongs to this provider. */
  protected abstract doCopy(options: CopyOptions): Promise<CreateResult>;
  /** Lists objects under the store (optionally under `prefix`). */
  protected abstract doListObjects(options: ListOptions): Promise<StoredObject[]>;
  /** Gives `options.host` a way to reach the object. */
  protected abstract doGrantAccess(options: AccessOptions): Promise<AccessResult>;
  /** Withdraws what {@link doGrantAccess} gave, if anything can be withdrawn. */
  protected abstract doRevokeAccess(options: AccessOptions): Promise<void>;

  /** Resizes the object; the default refuses with {@link UnsupportedOperationError}. */
  protected async doResize(options: ResizeOptions): Promise<CreateResult> {
    throw new UnsupportedOperationError(`${this.providerName} objects cannot be resized`, {
      context: objectFields(options.store, options.object),
    });
  }

  /** Whether this driver copies `src` to `dst` itself; the default is no. */
  canCopy(_src: CopyEndpoint, _dst: CopyEndpoint): boolean {
    return false;
  }

  async createAsync(options: CreateOptions): Promise<CreateResult> {
    return runLogged(options?.ctx, `${this.providerName}.create`, this.#fields(options), async () => {
      this.#validateObjectOptions(options);
      if (options.sizeBytes !== undefined) assertPositiveSize(options.sizeBytes, 'sizeBytes');
      return this.doCreate(options);
    });
  }

  async deleteAsync(options: ObjectOptions): Promise<void> {
    return runLogged(options?.ctx, `${this.providerName}.delete`, this.#fields(options), async () => {
      this.#validateObjectOptions(options);
      try {
        await this.doDelete(options);
      } catch (error) {
        // A delete retried after a crash finds nothing: that is the outcome the caller wanted.
        if (toDriverError(error, 'delete') instanceof ObjectNotFoundError) {
          options.ctx.logger.info('object already absent', this.#fields(options));
          return;
        }
        throw error;
      }
    });
  }

  async copyAsync(options: CopyOptions): Promise<CreateResult> {
    const fields = {
      srcStoreId: options?.src?.store?.id,
      dstStoreId: options?.dst?.store?.id,
      objectId: options?.dst?.object?.id,
    };
    return runLogged(options?.ctx, `${this.providerName}.copy`, fields, async () => {
      this.#requireCtx(options?.ctx);
      validateStore(options.src?.store, 'src.store');
      validateObject(options.src?.object, 'src.object');
      validateStore(options.dst?.store, 'dst.store');
      validateObject(options.dst?.object, 'dst.object');
      if (
        options.src.store.provider !== this.providerName &&
        options.dst.store.provider !== this.providerName
      ) {
        throw new DriverInputError(`${this.providerName} driver asked to copy between two foreign stores`);
      }
      if (this.getCapabilities().needsHost && options.hostId === undefined) {
        throw new DriverInputError(`${this.providerName} needs a hostId to copy`, {
          context: { field: 'hostId' },
        });
      }
      if (options.hostId !== undefined) assertSafeId(options.hostId, 'hostId');
      return this.doCopy(options);
    });
  }

  async resize(options: ResizeOptions): Promise<CreateResult> {
    const fields = { ...this.#fields(options), newSizeBytes: options?.newSizeBytes };
    return runLogged(options?.ctx, `${this.providerName}.resize`, fields, async () => {
      this.#validateObjectOptions(options);
      assertPositiveSize(options.newSizeBytes, 'newSizeBytes');
      return this.doResize(options);
    });
  }

  async listObjects(options: ListOptions): Promise<StoredObject[]> {
    const fields = { storeId: options?.store?.id, prefix: options?.prefix };
    return runLogged(options?.ctx, `${this.providerName}.list`, fields, async () => {
      this.#requireCtx(options?.ctx);
      this.#validateOwnStore(options.store);
      if (options.prefix !== undefined && options.prefix !== '') {
        assertRelativePath(options.prefix.replace(/\/$/, ''), 'prefix');
      }
      if (this.getCapabilities().needsHost && options.hostId === undefined) {
        throw new DriverInputError(`${this.providerName} needs a hostId to list`, {
          context: { field: 'hostId' },
        });
      }
      if (options.hostId !== undefined) assertSafeId(options.hostId, 'hostId');
      return this.doListObjects(options);
    });
  }

  async grantAccess(options: AccessOptions): Promise<AccessResult> {
    const fields = { ...this.#fields(options), hostId: options?.host?.id };
    return runLogged(options?.ctx, `${this.providerName}.grantAccess`, fields, async () => {
      this.#validateAccess(options);
      return this.doGrantAccess(options);
    });
  }

  async revokeAccess(options: AccessOptions): Promise<void> {
    const fields = { ...this.#fields(options), hostId: options?.host?.id };
    return runLogged(options?.ctx, `${this.providerName}.revokeAccess`, fields, async () => {
      this.#validateAccess(options);
      await this.doRevokeAccess(options);
    });
  }

  /** Validation shared with subclasses that add public methods (see {@link BasePrimaryDataStoreDriver}). */
  protected validateObjectOptions(options: ObjectOptions): void {
    this.#validateObjectOptions(options);
  }

  /** Logging and error wrapping shared with subclasses that add public methods. */
  protected runOperation<T>(
    options: ObjectOptions,
    operation: string,
    extra: DriverErrorContext,
    fn: () => Promise<T>,
  ): Promise<T> {
    return runLogged(
      options?.ctx,
      `${this.providerName}.${operation}`,
      { ...this.#fields(options), ...extra },
      fn,
    );
  }

  #fields(options: ObjectOptions | undefined): DriverErrorContext {
    if (!options?.store || !options.object) return { storeId: options?.store?.id };
    return objectFields(options.store, options.object);
  }

  #requireCtx(ctx: DriverContext | undefined): asserts ctx is DriverContext {
    if (!ctx || typeof ctx.jobId !== 'string' || !ctx.logger || !ctx.host) {
      throw new DriverInputError('ctx with jobId, logger and host is required', {
        context: { field: 'ctx' },
      });
    }
    assertSafeId(ctx.jobId, 'ctx.jobId');
  }

  #validateOwnStore(store: DataStoreInfo | undefined): asserts store is DataStoreInfo {
    validateStore(store, 'store');
    if (store.provider !== this.providerName) {
      throw new DriverInputError(
        `store ${store.id} belongs to provider '${store.provider}', not '${this.providerName}'`,
        {
          context: { field: 'store.provider' },
        },
      );
    }
  }

  #validateObjectOptions(options: ObjectOptions): void {
    this.#requireCtx(options?.ctx);
    this.#validateOwnStore(options.store);
    validateObject(options.object, 'object');
    if (this.getCapabilities().needsHost && options.hostId === undefined) {
      throw new DriverInputError(`${this.providerName} needs a hostId for this call`, {
        context: { field: 'hostId' },
      });
    }
    if (options.hostId !== undefined) assertSafeId(options.hostId, 'hostId');
  }

  #validateAccess(options: AccessOptions): void {
    // Access is granted to a host, so the host's id doubles as the endpoint when none was given.
    const withHost =
      options?.host && options.hostId === undefined ? { ...options, hostId: options.host.id } : options;
    this.#validateObjectOptions(withHost);
    if (!options.host) throw new DriverInputError('host is required', { context: { field: 'host' } });
    assertSafeId(options.host.id, 'host.id');
  }
}

/**
 * The base of a primary-storage driver: adds storage-side snapshots with the same validation,
 * logging and error wrapping.
 *
 * @example
 * class AcmePrimaryDriver extends BasePrimaryDataStoreDriver {
 *   // ...the BaseDataStoreDriver hooks, plus:
 *   protected async doTakeSnapshot({ object, snapshot }: SnapshotOptions) { return { path: `${object.path}@${snapshot.id}`, sizeBytes: 0 }; }
 *   protected async doRevertSnapshot() {}
 * }
 */
export abstract class BasePrimaryDataStoreDriver
  extends BaseDataStoreDriver
  implements PrimaryDataStoreDriver
{
  /** Takes a storage-side snapshot of `object` named by `snapshot.id`; should be idempotent. */
  protected abstract doTakeSnapshot(options: SnapshotOptions): Promise<CreateResult>;
  /** Puts `object` back to the state captured by `snapshot`. */
  protected abstract doRevertSnapshot(options: SnapshotOptions): Promise<void>;

  async takeSnapshot(options: SnapshotOptions): Promise<CreateResult> {
    return this.runOperation(options, 'takeSnapshot', { snapshotId: options?.snapshot?.id }, async () => {
      this.#validateSnapshot(options);
      return this.doTakeSnapshot(options);
    });
  }

  async revertSnapshot(options: SnapshotOptions): Promise<void> {
    return this.runOperation(options, 'revertSnapshot', { snapshotId: options?.snapshot?.id }, async () => {
      this.#validateSnapshot(options);
      await this.doRevertSnapshot(options);
    });
  }

  #validateSnapshot(options: SnapshotOptions): void {
    this.validateObjectOptions(options);
    validateObject(options.snapshot, 'snapshot');
    if (options.snapshot.kind !== DataObjectKind.Snapshot) {
      throw new DriverInputError("snapshot.kind must be 'snapshot'", { context: { field: 'snapshot.kind' } });
    }
  }
}

/**
 * The base of a lifecycle: validates `details` with the provider's schema in `initialize`, logs
 * every call, wraps errors, and defaults every other step to "nothing to do". Override the `on*`
 * hooks that matter for your storage.
 *
 * @example
 * class AcmeLifeCycle extends BaseDataStoreLifeCycle {
 *   constructor() { super('acme', z.object({ portal: z.string() })); }
 *   protected override async onAttachHost({ hosts }: AttachOptions) { for (const h of hosts) await login(h); }
 * }
 */
export abstract class BaseDataStoreLifeCycle implements DataStoreLifeCycle {
  constructor(
    protected readonly providerName: string,
    protected readonly detailsSchema: ZodType<Record<string, string>>,
  ) {}

  /** Called with details already validated and normalised by the schema. */
  protected async onInitialize(_options: StoreOptions): Promise<InitializeResult> {
    return {};
  }
  protected async onAttachZone(_options: AttachOptions): Promise<void> {}
  protected async onAttachCluster(_options: AttachOptions): Promise<void> {}
  protected async onAttachHost(_options: AttachOptions): Promise<void> {}
  protected async onMaintain(_options: AttachOptions): Promise<void> {}
  protected async onCancelMaintain(_options: AttachOptions): Promise<void> {}
  protected async onEnable(_options: StoreOptions): Promise<void> {}
  protected async onDisable(_options: StoreOptions): Promise<void> {}
  protected async onDeleteDataStore(_options: StoreOptions): Promise<void> {}

  /**
   * Parses `details` with the provider's schema, or throws {@link DriverInputError} naming the
   * field at fault.
   */
  protected parseDetails(store: DataStoreInfo): Record<string, string> {
    const parsed = this.detailsSchema.safeParse(store.details);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const field = `details.${issue?.path.join('.') ?? ''}`;
      throw new DriverInputError(`${this.providerName} store ${store.id}: ${field}: ${issue?.message}`, {
        cause: parsed.error,
        context: { field, storeId: store.id },
      });
    }
    return parsed.data;
  }

  async initialize(options: StoreOptions): Promise<InitializeResult> {
    return this.#run('initialize', options, async () => {
      const details = this.parseDetails(options.store);
      const result = await this.onInitialize({ ...options, store: { ...options.store, details } });
      return { ...result, details: result.details ?? details };
    });
  }
  async attachZone(options: AttachOptions): Promise<void> {
    return this.#run('attachZone', options, () => this.onAttachZone(this.#parsed(options)));
  }
  async attachCluster(options: AttachOptions): Promise<void> {
    return this.#run('attachCluster', options, () => this.onAttachCluster(this.#parsed(options)));
  }
  async attachHost(options: AttachOptions): Promise<void> {
    return this.#run('attachHost', options, () => this.onAttachHost(this.#parsed(options)));
  }
  async maintain(options: AttachOptions): Promise<void> {
    return this.#run('maintain', options, () => this.onMaintain(this.#parsed(options)));
  }
  async cancelMaintain(options: AttachOptions): Promise<void> {
    return this.#run('cancelMaintain', options, () => this.onCancelMaintain(this.#parsed(options)));
  }
  async enable(options: StoreOptions): Promise<void> {
    return this.#run('enable', options, () => this.onEnable(this.#parsed(options)));
  }
  async disable(options: StoreOptions): Promise<void> {
    return this.#run('disable', options, () => this.onDisable(this.#parsed(options)));
  }
  async deleteDataStore(options: StoreOptions): Promise<void> {
    return this.#run('deleteDataStore', options, () => this.onDeleteDataStore(this.#parsed(options)));
  }

  #parsed<O extends StoreOptions>(options: O): O {
    return { ...options, store: { ...options.store, details: this.parseDetails(options.store) } };
  }

  #run<T>(operation: string, options: StoreOptions, fn: () => Promise<T>): Promise<T> {
    const hosts = (options as Partial<AttachOptions>)?.hosts;
    const fields = { storeId: options?.store?.id, hostIds: hosts?.map((h) => h.id) };
    return runLogged(options?.ctx, `${this.providerName}.${operation}`, fields, async () => {
      validateStore(options?.store, 'store');
      if (options.store.provider !== this.providerName) {
        throw new DriverInputError(`store ${options.store.id} belongs to '${options.store.provider}'`, {
          context: { field: 'store.provider' },
        });
      }
      return fn();
    });
  }
}
