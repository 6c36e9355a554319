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
import type { Readable } from 'node:stream';
import type { ZodType } from 'zod';
import type { HostStorage } from './host-config.js';

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
  /**
   * Names this call within its workflow step, for a call that only some runs of the step make (a
   * renewal, say): a run that makes it again under the same name finds it recorded, one under a new
   * name sends it anew. Without it a call is named by its order among the step's calls of that
   * operation, which suits calls every run makes.
   */
  callKey?: string;
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
  /**
   * Compares two images content-wise (e.g. `qemu-img compare` on a host that mounts both stores).
   * Optional; Strata verifies a migrated volume with it before removing the source.
   */
  compareAsync?(options: CopyOptions): Promise<{ identical: boolean }>;
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
  /**
   * Removes a snapshot without breaking anything that depends on it (merging its data into its
   * children). Optional: without it, snapshots can only be removed with their volume.
   */
  deleteSnapshot?(options: SnapshotOptions): Promise<unknown>;
}

/** What a chunk scan counted (docs/backup-format.md). */
export interface ChunkBackupCounters {
  /** Bytes read from the disk by the scan, or re-read by the upload. */
  bytesRead: number;
  /** Bytes PUT to the image store. */
  bytesUploaded: number;
  chunksTotal: number;
  /** Recomputed chunks whose reference differs from the previous manifest's (every non-zero chunk on a full backup). */
  chunksChanged: number;
  /** Non-zero chunks of the manifest this backup does not upload. */
  chunksReused: number;
  zeroChunks: number;
}

/** Options of {@link BackupCapableDriver.scanSnapshotChunks}. */
export interface ChunkScanOptions extends SnapshotOptions {
  chunkSizeBytes: number;
  /**
   * The volume's most recent backup. When it is the snapshot's base (the snapshot holds exactly the
   * writes made since it), the scan reads only the changed extents and carries every other chunk
   * over from this manifest; otherwise the scan is full (`incremental: false`).
   */
  previous?: {
    snapshotId: string;
    /** Presigned GET of the previous manifest (JSON, `BackupManifestSchema`). */
    manifestUrl: string;
  };
  /**
   * A presigned POST policy for the job's staging prefix. A driver that takes it uploads, in the
   * same pass, every chunk it computes that is neither in `previous`'s manifest nor known to the
   * store, as `<keyPrefix><sha256>` with its SHA-256, and lists them in `staged`; the control plane
   * then moves them under their content address itself, so the backup is one host command. A
   * driver may ignore it (no `staged`): the chunks are then uploaded by `uploadSnapshotChunks`.
   */
  staging?: PresignedPost;
}

/** Result of {@link BackupCapableDriver.scanSnapshotChunks}. */
export interface ChunkScanResult {
  virtualSizeBytes: number;
  chunkSizeBytes: number;
  /** The new manifest's complete chunk list: index → sha256, or null for an all-zero chunk. */
  chunks: Array<string | null>;
  /** Distinct hashes computed by this scan, each with one chunk index that holds it. */
  computed: Array<{ index: number; sha256: string }>;
  /** True when only the extents changed since `previous` were read. */
  incremental: boolean;
  /** With `staging`: the distinct hashes uploaded to the staging prefix, each with the index read. */
  staged?: Array<{ index: number; sha256: string }>;
  counters: ChunkBackupCounters;
}

/** Options of {@link BackupCapableDriver.uploadSnapshotChunks}. */
export interface ChunkUploadOptions extends SnapshotOptions {
  chunkSizeBytes: number;
  /** Presigned GET of a JSON array `[{ index, sha256, url }]`: one presigned PUT per chunk to upload. */
  uploadsUrl: string;
  /** How many entries the list holds (for progress and sanity checks). */
  count: number;
}

/** Result of {@link BackupCapableDriver.uploadSnapshotChunks}. */
export interface ChunkUploadResult {
  chunksUploaded: number;
  bytesRead: number;
  bytesUploaded: number;
}

/** Options of {@link BackupCapableDriver.restoreChunks}. */
export interface ChunkRestoreOptions extends ObjectOptions {
  virtualSizeBytes: number;
  chunkSizeBytes: number;
  /**
   * Presigned GET of the restore list's index: `{ version: 1, entries, pages: [url…] }`, each page
   * a presigned GET of up to 256 `{ index, sha256, url }` entries for the non-zero chunks, in index
   * order (docs/backup-format.md). Give this or `chunksUrl`.
   */
  chunkPagesUrl?: string;
  /**
   * Presigned GET of the whole list as one JSON array with one entry per chunk index:
   * `{ index, sha256, url }` or null (zeros). For small disks; give this or `chunkPagesUrl`.
   */
  chunksUrl?: string;
  /** The disk's number of chunk indexes. */
  count: number;
}

/** Result of {@link BackupCapableDriver.restoreChunks}. */
export interface ChunkRestoreResult extends CreateResult {
  /** False when an earlier run had already restored the object (idempotent retry). */
  restored: boolean;
  chunksFetched: number;
  bytesDownloaded: number;
  zeroChunks: number;
  /** Milliseconds the host spent fetching, verifying and writing the chunks (absent when nothing was restored). */
  transferMs?: number;
}

/**
 * Optional capability of a primary driver: incremental, content-addressed backup of snapshots to
 * the image store and restore from it (docs/backup-format.md). The host only ever sees presigned
 * URLs; lists that could outgrow a host request travel as presigned JSON objects.
 *
 * A backup is one scan that hashes the changed chunks and, given a `staging` POST policy, uploads
 * those the previous backup does not name to the job's staging prefix in the same pass; the
 * control plane checks them against its chunk index, moves the staged ones under their content
 * address, and asks for `uploadSnapshotChunks` (presigned PUTs) only for chunks still missing. The
 * manifest is written only after every chunk it names is stored.
 */
export interface BackupCapableDriver {
  scanSnapshotChunks(options: ChunkScanOptions): Promise<ChunkScanResult>;
  uploadSnapshotChunks(options: ChunkUploadOptions): Promise<ChunkUploadResult>;
  /** Restores a manifest's chunks into a new object (a volume) at `object`'s path, verifying every hash. */
  restoreChunks(options: ChunkRestoreOptions): Promise<ChunkRestoreResult>;
}

/** Narrows a driver to one that backs snapshots up in chunks. */
export function isBackupCapable(driver: DataStoreDriver): driver is DataStoreDriver & BackupCapableDriver {
  const d = driver as Partial<BackupCapableDriver>;
  return (
    typeof d.scanSnapshotChunks === 'function' &&
    typeof d.uploadSnapshotChunks === 'function' &&
    typeof d.restoreChunks === 'function'
  );
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
  /**
   * The storage roots this host's own configuration allows (./host-config.ts). Host operations
   * prove every mount path with it before touching it (`confineMountPaths` does it for a whole set).
   */
  storage: HostStorage;
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
  /**
   * Refuses a store this deployment cannot serve although its details are well-formed: for example
   * an S3 bucket the control plane holds no IAM grant for. Called when a store is added, before
   * anything is recorded; return the field at fault and why, or undefined to accept.
   *
   * @example
   * admit: (details) => (allowed.includes(details.bucket!) ? undefined : { field: 'bucket', message: 'not granted' }),
   */
  admit?(details: Record<string, string>): { field: string; message: string } | undefined;
  /**
   * Whether two stores of this provider would share storage on a host they both reach (an nfs
   * mount path inside another's): the field at fault and why, or undefined. Called when a store is
   * added, against every store of the provider whose scope may share a host with it.
   *
   * @example
   * overlaps: (a, b) => (a.path === b.path ? { field: 'path', message: `is also store's path` } : undefined),
   */
  overlaps?(
    details: Record<string, string>,
    other: Record<string, string>,
  ): { field: string; message: string } | undefined;
  lifecycle: DataStoreLifeCycle;
  driver: DataStoreDriver;
  /** Host operations, when the provider does work on hypervisor hosts. */
  hostOperations?: HostOperationSet;
  /**
   * How templates become usable on this provider's primary stores (cache once per pool, then linked
   * clones or full copies). Primary providers without one cannot create volumes from templates.
   */
  templateInstall?: TemplateInstallStrategy;
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
  /**
   * Where the host downloads the template from: an http(s) URL, typically a presigned GET of the
   * image-store object (`ImageStoreDriver.presignGet`). Strategies that pull through a host need it.
   */
  sourceUrl?: string;
  /** Format of the bytes behind `sourceUrl`; defaults to `template.object.format`. */
  sourceFormat?: ImageFormat;
  /** sha256 (hex) the downloaded bytes must have; a mismatch fails with code `ChecksumMismatch`. */
  expectedSha256?: string;
  /** Length of the object behind `sourceUrl`, as the image store reports it. */
  sourceSizeBytes?: number;
  /**
   * The version of the object behind `sourceUrl` to fetch (its ETag): the download is pinned to it
   * (`If-Match`), so a replaced object fails with `SourceChanged` instead of being installed.
   */
  sourceEtag?: string;
  /**
   * The image store proved that version `sourceEtag` has `expectedSha256`: it recorded that
   * full-object SHA-256 when the object was written (S3 `ChecksumSHA256`, computed by the store from
   * the bytes it received). The host then does not hash the bytes again. Only with `sourceEtag` and
   * `expectedSha256`.
   */
  sourceVerified?: boolean;
}

/** How a volume is made from a template cache entry: a copy-on-write overlay, or a standalone copy. */
export const VolumeCloneMode = { Linked: 'linked', Full: 'full' } as const;
export type VolumeCloneMode = (typeof VolumeCloneMode)[keyof typeof VolumeCloneMode];

/**
 * Options for {@link TemplateInstallStrategy.createVolume}.
 *
 * @example
 * const opts: TemplateVolumeOptions = {
 *   cache: { store: pool, object: { kind: 'template', id: 'tpl-1', format: 'qcow2', path: 'templates/tpl-1.qcow2' } },
 *   volume: { kind: 'volume', id: 'vol-1', format: 'qcow2' }, sizeBytes: 20 << 30, ctx, hostId: 'host-1', mode: 'linked',
 * };
 */
export interface TemplateVolumeOptions {
  cache: CopyEndpoint;
  volume: DataObjectRef;
  /** Virtual size of the volume; strategies grow the clone to it and refuse less than the template. */
  sizeBytes: number;
  ctx: DriverContext;
  hostId: string;
  /** Default `linked` where the provider supports linked clones. */
  mode?: VolumeCloneMode;
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
  createVolume(options: TemplateVolumeOptions): Promise<CreateResult>;
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

// ---------------------------------------------------------------------------------------------
// Image stores: streaming, presigned uploads and downloads.
// ---------------------------------------------------------------------------------------------

/** Options for {@link ImageStoreDriver.writeStream}. */
export interface WriteStreamOptions extends ObjectOptions {
  /** The bytes to store. It is consumed once; on failure the driver destroys it. */
  body: Readable;
  /**
   * Exact length of `body` when known. Lets the driver size its parts for large objects (without it,
   * an S3 driver is limited to 10,000 × its part size) and makes a short or long body a failure
   * instead of a silently different object.
   */
  contentLength?: number;
  /** Aborts the write; nothing is left behind (no object, no multipart upload). */
  signal?: AbortSignal;
  /** Called with the number of bytes stored so far, as parts complete. */
  onProgress?(bytes: number): void;
}

/** Options for {@link ImageStoreDriver.readStream}. */
export interface ReadStreamOptions extends ObjectOptions {
  /** Inclusive byte range, as in HTTP: `{ start: 0, end: 99 }` is the first 100 bytes. */
  range?: { start: number; end: number };
  signal?: AbortSignal;
}

/** Result of {@link ImageStoreDriver.readStream}. */
export interface ReadStreamResult {
  body: Readable;
  /** Bytes `body` will yield (the range's length for a range read). */
  sizeBytes: number;
  /** Size of the whole object. */
  totalSizeBytes: number;
}

/** Result of {@link ImageStoreDriver.statObject}. */
export interface ObjectStat {
  sizeBytes: number;
  /** An opaque version tag; equal tags mean equal content (not necessarily an MD5). */
  etag?: string;
  modifiedAt?: string;
  /**
   * The whole object's SHA-256 (hex) as the store verified and recorded it when the object was
   * written (S3's `ChecksumSHA256`); only with `StatObjectOptions.checksum`, and absent when the
   * object was stored without one.
   */
  checksumSha256?: string;
}

/** Options for {@link ImageStoreDriver.statObject}. */
export interface StatObjectOptions extends ObjectOptions {
  /** Also return the SHA-256 checksum the store recorded at write time (S3 `ChecksumMode: ENABLED`). */
  checksum?: boolean;
}

/** Options for {@link ImageStoreDriver.createUpload}. */
export interface CreateUploadOptions extends ObjectOptions {
  /** Total size of the object the client will upload. */
  sizeBytes: number;
  /** Wanted part size; the driver may grow it (part-count limits) and says which it used. */
  partSizeBytes?: number;
  /** Lifetime of the part URLs. */
  expiresSeconds?: number;
}

/** One part of a presigned multipart upload: PUT exactly `sizeBytes` bytes from `offset` to `url`. */
export interface UploadPartUrl {
  partNumber: number;
  url: string;
  offset: number;
  sizeBytes: number;
}

/**
 * A multipart upload the client performs itself: it PUTs each part to its URL (in any order, in
 * parallel), keeps each response's `ETag` header, then asks Strata to complete the upload.
 */
export interface CreateUploadResult {
  uploadId: string;
  /** Where the object will be once completed (relative to the store). */
  path: string;
  partSizeBytes: number;
  parts: UploadPartUrl[];
  /** ISO-8601; after it the URLs are refused (ask for fresh ones with `presignUploadParts`). */
  expiresAt: string;
}

/** Options for {@link ImageStoreDriver.presignUploadParts}. */
export interface PresignUploadPartsOptions extends ObjectOptions {
  uploadId: string;
  /** Total size and part size as returned by `createUpload`, to compute each part's range. */
  sizeBytes: number;
  partSizeBytes: number;
  /** Parts to presign again, e.g. those not yet uploaded when the first URLs expired. */
  partNumbers: number[];
  expiresSeconds?: number;
}

/** A part the client uploaded: its number and the `ETag` its PUT answered. */
export interface CompletedPart {
  partNumber: number;
  etag: string;
}

/** Options for {@link ImageStoreDriver.completeUpload}. */
export interface CompleteUploadOptions extends ObjectOptions {
  uploadId: string;
  /** Every part, numbered 1..N without gaps or duplicates (any order; sent sorted). */
  parts: CompletedPart[];
  /** Expected total size; when given, a completed object of another size is deleted and refused. */
  sizeBytes?: number;
}

/** Options for {@link ImageStoreDriver.abortUpload}. */
export interface AbortUploadOptions extends ObjectOptions {
  uploadId: string;
}

/** Options for {@link ImageStoreDriver.listUploads}. */
export interface ListUploadsOptions extends StoreOptions {
  /** Only uploads initiated before this instant (a reconciler's "abandoned" threshold). */
  olderThan?: Date;
}

/** A multipart upload that was started and neither completed nor aborted. */
export interface PendingUpload {
  path: string;
  uploadId: string;
  /** ISO-8601. */
  initiatedAt: string;
}

/** Options for {@link ImageStoreDriver.presignGet} and {@link ImageStoreDriver.presignPut}. */
export interface PresignOptions extends ObjectOptions {
  expiresSeconds?: number;
  /**
   * presignGet: the caller already knows the object exists (e.g. the chunk index says it is stored
   * and holds it), so the driver signs without checking. Default false: a missing object is an
   * ObjectNotFoundError.
   */
  knownToExist?: boolean;
  /**
   * presignPut: the SHA-256 (hex) the body must have. It is signed into the URL as the
   * `x-amz-checksum-sha256` header (base64), which the client must send; the store refuses a body
   * with another hash (S3: 400 BadDigest) and records the checksum with the object.
   */
  checksumSha256?: string;
}

/** Options for {@link ImageStoreDriver.presignPost}. */
export interface PresignPostOptions extends StoreOptions {
  /** Path prefix relative to the store's prefix, ending in `/`: every upload's key starts with it. */
  prefix: string;
  /** Largest object one upload may create. */
  maxBytes: number;
  expiresSeconds?: number;
}

/**
 * A presigned POST policy: its holder uploads any number of objects under `keyPrefix` until
 * `expiresAt` by POSTing multipart/form-data to `url` with `fields` as given, then `key`
 * (`keyPrefix` + a name), `x-amz-checksum-algorithm: SHA256`, `x-amz-checksum-sha256` (base64 of
 * the body's SHA-256, verified by the store and kept with the object) and last `file`.
 */
export interface PresignedPost {
  url: string;
  fields: Record<string, string>;
  /** The full object key prefix (store prefix included) the `key` field must start with. */
  keyPrefix: string;
  maxBytes: number;
  /** ISO-8601. */
  expiresAt: string;
}

/** A presigned URL and when it stops working. */
export interface PresignedUrl {
  url: string;
  /** ISO-8601. */
  expiresAt: string;
  /** The object's path in the store (relative to its prefix). */
  path: string;
}

/**
 * What an image store (templates, ISOs) adds to a {@link DataStoreDriver}: streaming in and out,
 * multipart uploads done by clients through presigned URLs (Strata never proxies the bytes), and
 * presigned downloads for hosts. Optional: narrow with {@link isImageStoreDriver}.
 *
 * Objects are addressed like every other driver call (`object.path` when set, else the driver's
 * own layout; for S3 `templates/<id>/<id>.<format>` and `isos/<id>/<id>.iso` under the store
 * prefix). A write replaces an existing object atomically; a failed or aborted write leaves the
 * previous state (no partial object, no pending multipart upload).
 *
 * @example
 * // Ingest a template from an HTTP source, then hand a host a download URL.
 * if (!isImageStoreDriver(driver)) throw new UnsupportedOperationError('not an image store');
 * const res = await fetch(sourceUrl);
 * const body = Readable.fromWeb(res.body as ReadableStream);
 * const object = { kind: 'template', id: 'tpl-1', format: 'qcow2' } as const;
 * const { path, sizeBytes } = await driver.writeStream({
 *   store, object, body, ctx, contentLength: Number(res.headers.get('content-length')),
 * });
 * const { url } = await driver.presignGet({ store, object: { ...object, path }, ctx, expiresSeconds: 900 });
 *
 * @example
 * // A client uploads a template itself: create, PUT the parts, complete.
 * const up = await driver.createUpload({ store, object, sizeBytes: file.size, ctx });
 * const parts = await Promise.all(up.parts.map(async (p) => {
 *   const r = await fetch(p.url, { method: 'PUT', body: file.slice(p.offset, p.offset + p.sizeBytes) });
 *   return { partNumber: p.partNumber, etag: r.headers.get('etag')! };
 * }));
 * await driver.completeUpload({ store, object, uploadId: up.uploadId, parts, ctx });
 */
export interface ImageStoreDriver extends DataStoreDriver {
  /** Stores `body` as the object, streaming with bounded memory; resolves once it is durable. */
  writeStream(options: WriteStreamOptions): Promise<CreateResult>;
  /** Opens the object (or an inclusive byte range of it) for reading. Missing: `ObjectNotFoundError`. */
  readStream(options: ReadStreamOptions): Promise<ReadStreamResult>;
  /** Size and version tag of the object (and its stored checksum, if asked), or `undefined` when it does not exist. */
  statObject(options: StatObjectOptions): Promise<ObjectStat | undefined>;
  /** Starts a multipart upload and presigns one PUT URL per part. */
  createUpload(options: CreateUploadOptions): Promise<CreateUploadResult>;
  /** Presigns fresh URLs for some parts of an upload (the first ones expired). */
  presignUploadParts(options: PresignUploadPartsOptions): Promise<UploadPartUrl[]>;
  /** Assembles the uploaded parts into the object. */
  completeUpload(options: CompleteUploadOptions): Promise<CreateResult>;
  /** Discards an upload and its parts; aborting an unknown or finished upload succeeds. */
  abortUpload(options: AbortUploadOptions): Promise<void>;
  /** Uploads started in this store and never completed nor aborted. */
  listUploads(options: ListUploadsOptions): Promise<PendingUpload[]>;
  /** A URL that GETs the object without credentials until `expiresAt`. Missing: `ObjectNotFoundError`. */
  presignGet(options: PresignOptions): Promise<PresignedUrl>;
  /**
   * A URL that PUTs the whole object in one request (small objects: manifests, backup chunks). With
   * `checksumSha256`, the PUT must carry it as `x-amz-checksum-sha256` and a mismatch is refused.
   */
  presignPut(options: PresignOptions): Promise<PresignedUrl>;
  /**
   * Optional: one grant for many uploads under a prefix (see {@link PresignedPost}), so a host can
   * upload objects whose names it learns only while it works (backup chunks to a job's staging
   * prefix). Without it, backups take a second host command with one presigned PUT per chunk.
   */
  presignPost?(options: PresignPostOptions): Promise<PresignedPost>;
  /**
   * Optional: deletes many objects in as few requests as the store allows (S3 DeleteObjects: 1000
   * keys a request). Objects already gone are not an error. Without it, callers delete one by one.
   */
  deleteObjects?(options: DeleteObjectsOptions): Promise<void>;
}

/** Options of {@link ImageStoreDriver.deleteObjects}. */
export interface DeleteObjectsOptions extends StoreOptions {
  objects: DataObjectRef[];
}

const IMAGE_STORE_METHODS = [
  'writeStream',
  'readStream',
  'statObject',
  'createUpload',
  'presignUploadParts',
  'completeUpload',
  'abortUpload',
  'listUploads',
  'presignGet',
  'presignPut',
] as const satisfies readonly (keyof ImageStoreDriver)[];

/**
 * Narrows a driver to an {@link ImageStoreDriver} (every image-store method is present).
 *
 * @example
 * if (isImageStoreDriver(provider.driver)) await provider.driver.statObject({ store, object, ctx });
 */
export function isImageStoreDriver(driver: DataStoreDriver): driver is ImageStoreDriver {
  const candidate = driver as unknown as Record<string, unknown>;
  return IMAGE_STORE_METHODS.every((method) => typeof candidate[method] === 'function');
}

/**
 * Optional: a primary driver that can move an image out to an image store and back in through
 * presigned URLs, so a volume can move between two stores no single host reaches (staged motion).
 * `exportAsync` runs in phases: `prepare` (a standalone copy and its size and sha256), `upload`
 * (PUT the copy's byte ranges to presigned part URLs), `cleanup`.
 *
 * @example
 * if (isStagingDriver(driver)) {
 *   const prep = await driver.exportAsync({ store, object, hostId, ctx, phase: 'prepare' });
 * }
 */
export interface StagingDriver {
  exportAsync(
    options: ObjectOptions & { phase: 'prepare' },
  ): Promise<{ tempPath: string; sizeBytes: number; sha256: string }>;
  exportAsync(
    options: ObjectOptions & {
      phase: 'upload';
      tempPath: string;
      totalBytes: number;
      parts: UploadPartUrl[];
    },
  ): Promise<{ parts: { partNumber: number; etag: string }[] }>;
  exportAsync(options: ObjectOptions & { phase: 'cleanup'; tempPath: string }): Promise<unknown>;
  importAsync(
    options: ObjectOptions & { sourceUrl: string; sourceFormat: 'qcow2' | 'raw'; expectedSha256?: string },
  ): Promise<CreateResult>;
}

/** Narrows a driver to a {@link StagingDriver}. */
export function isStagingDriver(driver: DataStoreDriver): driver is DataStoreDriver & StagingDriver {
  const d = driver as Partial<StagingDriver>;
  return typeof d.exportAsync === 'function' && typeof d.importAsync === 'function';
}
