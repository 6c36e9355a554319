/**
 * The Strata driver SDK: the contracts a storage provider implements.
 *
 * A provider is one plugin. It has a control-plane half (a {@link DataStoreLifeCycle} and a
 * {@link DataStoreDriver}, run inside Strata's functions) and an optional host-side half
 * ({@link HostOperationSet}, run by the host runtime on the hypervisor host that owns the storage).
 * The control plane never touches host storage directly: it asks {@link DriverContext.host} to run
 * one of its own host operations on a host Strata picked.
 *
 * Every method takes one options object and returns one result object, so that fields can be added
 * without breaking existing drivers.
 */
import type { ZodType } from 'zod';

/** Roles a data store can play. */
export const DataStoreRole = { Primary: 'primary', Image: 'image' } as const;
export type DataStoreRole = (typeof DataStoreRole)[keyof typeof DataStoreRole];

/** How far a data store reaches. */
export const ScopeType = { Zone: 'zone', Cluster: 'cluster', Host: 'host' } as const;
export type ScopeType = (typeof ScopeType)[keyof typeof ScopeType];

/** Kinds of data object. */
export const DataObjectKind = {
  Template: 'template',
  Iso: 'iso',
  Volume: 'volume',
  Snapshot: 'snapshot',
} as const;
export type DataObjectKind = (typeof DataObjectKind)[keyof typeof DataObjectKind];

/** Disk image formats Strata understands. */
export const ImageFormat = { Qcow2: 'qcow2', Raw: 'raw', Vhd: 'vhd', Vmdk: 'vmdk', Iso: 'iso' } as const;
export type ImageFormat = (typeof ImageFormat)[keyof typeof ImageFormat];

/** Where a data store sits: a zone, optionally narrowed to a cluster or a single host. */
export interface DataStoreScope {
  type: ScopeType;
  zoneId: string;
  clusterId?: string;
  hostId?: string;
}

/**
 * What a driver sees of a data store. `details` are the provider's own settings (validated by
 * {@link DataStoreProvider.detailsSchema}), for example `{ bucket, prefix }` for S3 or
 * `{ server, export, mountPath }` for NFS.
 *
 * @example
 * const store: DataStoreInfo = {
 *   id: 'ds-1', name: 'nfs-a', provider: 'nfs', role: 'primary',
 *   scope: { type: 'cluster', zoneId: 'z1', clusterId: 'c1' },
 *   details: { server: '10.0.0.5', export: '/srv/nfs', mountPath: '/mnt/strata/ds-1' },
 *   capacityBytes: 1 << 40,
 * };
 */
export interface DataStoreInfo {
  id: string;
  name: string;
  provider: string;
  role: DataStoreRole;
  scope: DataStoreScope;
  details: Record<string, string>;
  capacityBytes: number;
}

/** What a driver sees of a host (a hypervisor host reachable through the endpoint channel). */
export interface HostInfo {
  id: string;
  name: string;
  zoneId: string;
  clusterId: string;
  hypervisor: string;
}

/**
 * A data object as a driver sees it. `path` is the driver's own locator inside the store
 * (an object key for S3, a file path relative to the share for NFS), set once the object exists.
 *
 * @example
 * const obj: DataObjectRef = { kind: 'volume', id: 'vol-1', format: 'qcow2', sizeBytes: 1 << 30 };
 */
export interface DataObjectRef {
  kind: DataObjectKind;
  id: string;
  path?: string;
  format?: ImageFormat;
  sizeBytes?: number;
  /** For snapshots and linked clones: the object this one depends on. */
  parent?: DataObjectRef;
}

/** One object found in a store by {@link DataStoreDriver.listObjects}. */
export interface StoredObject {
  path: string;
  sizeBytes: number;
  modifiedAt?: string;
}

/** A structured logger; Strata passes one bound to the job and store. */
export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** A request to run one host operation of a provider on one host. */
export interface HostCall {
  provider: string;
  operation: string;
  args: Record<string, unknown>;
  /** The job this call is made for (the fencing token); invokers fall back to their own when absent. */
  jobId?: string;
  /** How long the host may take before the runtime aborts the operation; invokers pick a default. */
  deadlineSeconds?: number;
}

/** Runs host operations on hosts through the endpoint channel (SSM on AWS, a child process locally). */
export interface HostInvoker {
  /**
   * Runs `call` on `hostId` and resolves with the operation's JSON result.
   * Rejects with a `HostOperationError` when the host reports failure.
   */
  run<T = unknown>(hostId: string, call: HostCall): Promise<T>;
}

/**
 * Everything Strata hands a control-plane driver call besides its arguments.
 * The `jobId` is a fencing token: host operations must carry it so a stale retry can be told apart.
 */
export interface DriverContext {
  jobId: string;
  logger: Logger;
  host: HostInvoker;
  /** Report progress of the current step, 0–100. */
  progress(percent: number, detail?: Record<string, unknown>): Promise<void>;
  /** Provider-specific services injected at registration, e.g. an S3 client factory. */
  services: Record<string, unknown>;
}

/** Options for lifecycle calls that concern a store only. */
export interface StoreOptions {
  store: DataStoreInfo;
  ctx: DriverContext;
}

/** Options for attaching a store to hosts. `hosts` are the hosts in the store's scope that are Up. */
export interface AttachOptions extends StoreOptions {
  hosts: HostInfo[];
}

/** What {@link DataStoreLifeCycle.initialize} may change about a new store. */
export interface InitializeResult {
  /** Normalised details to persist (e.g. defaults filled in). */
  details?: Record<string, string>;
  /** Capacity learned from the storage itself when the operator gave none. */
  capacityBytes?: number;
}

/**
 * The management plane of a store: what happens when an operator adds, attaches, maintains or
 * removes it. Every method must be idempotent: Strata may call it again after a crash.
 *
 * @example
 * const lifecycle: DataStoreLifeCycle = {
 *   async initialize({ store }) { return { details: { ...store.details, prefix: store.details.prefix ?? '' } }; },
 *   async attachZone() {}, async attachCluster() {}, async attachHost() {},
 *   async maintain() {}, async cancelMaintain() {}, async enable() {}, async disable() {},
 *   async deleteDataStore() {},
 * };
 */
export interface DataStoreLifeCycle {
  initialize(options: StoreOptions): Promise<InitializeResult>;
  attachZone(options: AttachOptions): Promise<void>;
  attachCluster(options: AttachOptions): Promise<void>;
  attachHost(options: AttachOptions): Promise<void>;
  maintain(options: AttachOptions): Promise<void>;
  cancelMaintain(options: AttachOptions): Promise<void>;
  enable(options: StoreOptions): Promise<void>;
  disable(options: StoreOptions): Promise<void>;
  deleteDataStore(options: StoreOptions): Promise<void>;
}

/** What a driver can do; Strata plans flows from this rather than from the provider's name. */
export interface DriverCapabilities {
  /** Storage-side snapshots (PrimaryDataStoreDriver.takeSnapshot). */
  snapshots: boolean;
  /** Volumes as linked clones of a cached template. */
  linkedClones: boolean;
  /** Copies between two stores of this provider without data passing through a host. */
  serverSideCopy: boolean;
  /** Whether host operations are needed (the store is reached through hypervisor hosts). */
  needsHost: boolean;
  /** Maximum object size in bytes, if any. */
  maxObjectBytes?: number;
}

/** Options for calls on one object in one store. */
export interface ObjectOptions extends StoreOptions {
  object: DataObjectRef;
  /** Host chosen by Strata's EndPointSelector, for drivers whose capabilities say `needsHost`. */
  hostId?: string;
}

/** Options for creating an object. */
export interface CreateOptions extends ObjectOptions {
  /** Bytes for a blank object; for a volume, its virtual size. */
  sizeBytes?: number;
}

/** Result of creating or copying an object. */
export interface CreateResult {
  path: string;
  sizeBytes: number;
  /** Virtual size for disk images, when known. */
  virtualSizeBytes?: number;
  format?: ImageFormat;
}

/** One side of a copy. */
export interface CopyEndpoint {
  store: DataStoreInfo;
  object: DataObjectRef;
}

/** Options for {@link DataStoreDriver.copyAsync}. */
export interface CopyOptions {
  src: CopyEndpoint;
  dst: CopyEndpoint;
  ctx: DriverContext;
  hostId?: string;
}

/** Options for {@link DataStoreDriver.grantAccess}. */
export interface AccessOptions extends ObjectOptions {
  host: HostInfo;
}

/** How a host reaches an object once access is granted. */
export interface AccessResult {
  /** A URI (`file:///mnt/...`, `s3://...`, `iscsi://...`) or a presigned URL. */
  uri: string;
  expiresAt?: string;
}

/** Options for {@link DataStoreDriver.resize}. */
export interface ResizeOptions extends ObjectOptions {
  newSizeBytes: number;
  /** Shrinking loses data beyond the new end; drivers refuse it unless this is set. */
  allowShrink?: boolean;
}

/** Options for {@link DataStoreDriver.listObjects}. */
export interface ListOptions extends StoreOptions {
  prefix?: string;
  /** Host to list from, for drivers whose capabilities say `needsHost`. */
  hostId?: string;
}

/**
 * The data plane of one kind of store. Implement it by extending `BaseDataStoreDriver`, which adds
 * validation, logging, idempotency of deletes and error wrapping around your hooks.
 */
export interface DataStoreDriver {
  getCapabilities(): DriverCapabilities;
  grantAccess(options: AccessOptions): Promise<AccessResult>;
  revokeAccess(options: AccessOptions): Promise<void>;
  listObjects(options: ListOptions): Promise<StoredObject[]>;
  createAsync(options: CreateOptions): Promise<CreateResult>;
  /** Deleting an object that does not exist succeeds. */
  deleteAsync(options: ObjectOptions): Promise<void>;
  copyAsync(options: CopyOptions): Promise<CreateResult>;
  /** Whether this driver can do the copy itself (e.g. an S3 server-side copy). */
  canCopy(src: CopyEndpoint, dst: CopyEndpoint): boolean;
  resize(options: ResizeOptions): Promise<CreateResult>;
}

/** Options for snapshot calls. */
export interface SnapshotOptions extends ObjectOptions {
  snapshot: DataObjectRef;
}

/** The data plane of a primary store: adds storage-side snapshots. */
export interface PrimaryDataStoreDriver extends DataStoreDriver {
  takeSnapshot(options: SnapshotOptions): Promise<CreateResult>;
  revertSnapshot(options: SnapshotOptions): Promise<void>;
}

/** Narrows a driver to a primary driver. */
export function isPrimaryDriver(driver: DataStoreDriver): driver is PrimaryDataStoreDriver {
  return (
    typeof (driver as Partial<PrimaryDataStoreDriver>).takeSnapshot === 'function' &&
    typeof (driver as Partial<PrimaryDataStoreDriver>).revertSnapshot === 'function'
  );
}

/** Context the host runtime gives a host operation. */
export interface HostOperationContext {
  jobId: string;
  hostId: string;
  /** A directory private to this host for scratch files and state. */
  workDir: string;
  logger: Logger;
  progress(percent: number, detail?: Record<string, unknown>): void;
  /** Aborted when the request's deadline passes or the runtime is stopped. */
  signal: AbortSignal;
}

/**
 * One operation a provider can run on a host. `args` is validated by the runtime before `run` is
 * called, so `run` receives typed, trusted input. Run external tools with argv arrays only.
 *
 * @example
 * const checkMount: HostOperation<{ mountPath: string }, { writable: boolean }> = {
 *   args: z.object({ mountPath: z.string().startsWith('/') }),
 *   async run({ mountPath }) { await access(mountPath, constants.W_OK); return { writable: true }; },
 * };
 */
export interface HostOperation<A = unknown, R = unknown> {
  args: ZodType<A>;
  run(args: A, ctx: HostOperationContext): Promise<R>;
}

/** The host-side half of a provider. */
export interface HostOperationSet {
  provider: string;
  // biome-ignore lint/suspicious/noExplicitAny: each operation has its own argument and result types
  operations: Record<string, HostOperation<any, any>>;
}

/**
 * A plugin's entry point: its identity, the roles it serves, and its two control-plane halves.
 *
 * @example
 * export const myProvider: DataStoreProvider = {
 *   name: 'acme-iscsi', roles: ['primary'], detailsSchema: z.object({ portal: z.string() }),
 *   lifecycle: new AcmeLifeCycle(), driver: new AcmeDriver(),
 * };
 */
export interface DataStoreProvider {
  /** kebab-case, unique in the registry. */
  name: string;
  roles: readonly DataStoreRole[];
  /** Validates `details` when an operator adds a store of this provider. */
  detailsSchema: ZodType<Record<string, string>>;
  lifecycle: DataStoreLifeCycle;
  driver: DataStoreDriver;
  /** Host operations, when the provider does work on hypervisor hosts. */
  hostOperations?: HostOperationSet;
}

/** Priority of a {@link DataMotionStrategy} for a given copy; the highest wins. */
export const StrategyPriority = { CANT_HANDLE: 0, DEFAULT: 1, HYPERVISOR: 2, HIGHEST: 3 } as const;
export type StrategyPriority = (typeof StrategyPriority)[keyof typeof StrategyPriority];

/**
 * How to move an object between two stores when neither driver can copy it itself.
 *
 * @example
 * const viaHost: DataMotionStrategy = {
 *   name: 'copy-through-host',
 *   canHandle: (src, dst) => (src.store.provider === 'nfs' ? StrategyPriority.HYPERVISOR : StrategyPriority.CANT_HANDLE),
 *   copy: async ({ src, dst, ctx }) => ({ path: dst.object.id, sizeBytes: 0 }),
 * };
 */
export interface DataMotionStrategy {
  name: string;
  canHandle(src: CopyEndpoint, dst: CopyEndpoint): StrategyPriority;
  copy(options: CopyOptions): Promise<CreateResult>;
}

/** Options for installing a template on a primary store. */
export interface TemplateInstallOptions {
  template: CopyEndpoint;
  pool: DataStoreInfo;
  ctx: DriverContext;
  hostId: string;
}

/**
 * How a template becomes usable on primary storage: cached once per pool, then each volume is a
 * linked clone or a full copy of the cache entry.
 */
export interface TemplateInstallStrategy {
  name: string;
  /** Copies the template into the pool's cache; idempotent. */
  install(options: TemplateInstallOptions): Promise<CreateResult>;
  /** Creates a volume from the pool's cache entry. */
  createVolume(options: {
    cache: CopyEndpoint;
    volume: DataObjectRef;
    sizeBytes: number;
    ctx: DriverContext;
    hostId: string;
  }): Promise<CreateResult>;
}

/** Options for {@link EndPointSelector.select}. */
export interface EndPointSelectOptions {
  /** The host must have every one of these stores attached. */
  storeIds: string[];
  /** Hosts not to pick (e.g. one that just failed). */
  excludeHostIds?: string[];
}

/** Picks the host that does a piece of work: Up, reaching every store involved, load-spread. */
export interface EndPointSelector {
  select(options: EndPointSelectOptions): Promise<HostInfo>;
}
