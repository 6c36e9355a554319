/**
 * The data model: the entities Strata keeps in its one table, and their status sets.
 * Key design and access patterns live with the DynamoDB adapter (`functions/adapters/aws/table-keys.ts`).
 */
import type { DataObjectKind, DataStoreRole, DataStoreScope, ImageFormat } from '../../drivers/sdk/types.js';

/** A claim on an entity in a transitional state: who holds it and until when. */
export interface Lease {
  /** The job that owns the transition (also the fencing token for host work). */
  owner: string;
  /** ISO-8601; after this the reconciler may move the entity to its recoverable state. */
  expiresAt: string;
}

/** Fields every stored entity carries. `version` increases by one with every write. */
export interface Versioned {
  version: number;
  createdAt: string;
  updatedAt: string;
  lease?: Lease;
}

export const DataStoreStatus = {
  Initializing: 'Initializing',
  Up: 'Up',
  Disabled: 'Disabled',
  PrepareForMaintenance: 'PrepareForMaintenance',
  Maintenance: 'Maintenance',
  CancelMaintenance: 'CancelMaintenance',
  ErrorInMaintenance: 'ErrorInMaintenance',
  Deleting: 'Deleting',
  Error: 'Error',
} as const;
export type DataStoreStatus = (typeof DataStoreStatus)[keyof typeof DataStoreStatus];

export interface DataStore extends Versioned {
  id: string;
  name: string;
  provider: string;
  role: DataStoreRole;
  scope: DataStoreScope;
  details: Record<string, string>;
  capacityBytes: number;
  /** Primary stores may promise more than they hold: allocation limit = capacity × this. */
  overprovisioning: number;
  /** Fraction (0–1] of the allocation limit past which the allocator stops placing new objects. */
  disableThreshold: number;
  tags: string[];
  status: DataStoreStatus;
  /** Sum of the sizes promised to objects on this store (reserved atomically by the allocator). */
  allocatedBytes: number;
  /** Bytes actually used, as last measured. */
  usedBytes: number;
  /** Why the store is in Error or ErrorInMaintenance. */
  statusReason?: string;
}

export const HostStatus = { Up: 'Up', Disabled: 'Disabled', Down: 'Down' } as const;
export type HostStatus = (typeof HostStatus)[keyof typeof HostStatus];

export interface Host extends Versioned {
  id: string;
  name: string;
  zoneId: string;
  clusterId: string;
  /** The SSM managed-instance id (`mi-…` or `i-…`), in the embedded stack as on AWS. */
  instanceId: string;
  hypervisor: string;
  status: HostStatus;
  /** Stores this host has attached (mounted, logged in to, …). */
  attachedStoreIds: string[];
  /** What the host's runtime last reported about itself (the host-probe flow). */
  runtime?: HostRuntime;
}

/** A host runtime's report: its build and prerequisites (see drivers/sdk/host-probe.ts). */
export interface HostRuntime {
  build: string;
  platform: string;
  arch: string;
  prerequisites: Record<string, { ok: boolean; version?: string; problem?: string }>;
  ready: boolean;
  /** Whether the build is the one this control plane was deployed with (no expected build: true). */
  current: boolean;
  checkedAt: string;
}

/** Object-in-store states, as in CloudStack's ObjectInDataStoreStateMachine. */
export const ObjectInStoreStatus = {
  Allocated: 'Allocated',
  Creating: 'Creating',
  Ready: 'Ready',
  Copying: 'Copying',
  Destroying: 'Destroying',
  Destroyed: 'Destroyed',
  Failed: 'Failed',
} as const;
export type ObjectInStoreStatus = (typeof ObjectInStoreStatus)[keyof typeof ObjectInStoreStatus];

export interface Template extends Versioned {
  id: string;
  name: string;
  type: Extract<DataObjectKind, 'template' | 'iso'>;
  format: ImageFormat;
  zoneId: string;
  /** Where it was registered from; absent for uploads. */
  url?: string;
  /** `{algo}hex`: as the operator gave it, or the sha256 Strata computed when none was given. */
  checksum?: string;
  virtualSizeBytes?: number;
  physicalSizeBytes?: number;
  /**
   * Volume creates accepted from this template that have not yet taken their reference on a pool's
   * cache entry: each is counted in the write that accepts it and given back in the write that takes
   * the reference (or fails the create), so a delete can never remove a template an accepted create
   * still needs.
   */
  pendingVolumes?: number;
  /** Set when a delete begins: creates are refused from then on (the write is conditional on it). */
  deletingSince?: string;
}

/**
 * One copy of a template in one store. On an image store it is the template itself; on a primary
 * store it is the pool's cache entry that volumes are linked clones of (`refCount` of them).
 * A cache entry with references can be neither deleted nor evicted.
 */
export interface TemplateInStore extends Versioned {
  templateId: string;
  storeId: string;
  /** Role of the store, so listings can tell image copies from primary cache entries. */
  storeRole: 'primary' | 'image';
  status: ObjectInStoreStatus;
  path?: string;
  sizeBytes?: number;
  virtualSizeBytes?: number;
  /** sha256 of the bytes in this store, `{sha256}hex`. */
  checksum?: string;
  /** 0–100 while Creating or Copying. */
  progress?: number;
  bytesTransferred?: number;
  /** An open presigned multipart upload into this store (uploads from the operator's machine). */
  uploadId?: string;
  /** The part size of that upload, to presign its parts again (POST .../uploads/{uploadId}/parts). */
  uploadPartSizeBytes?: number;
  refCount: number;
  statusReason?: string;
}

export const VolumeStatus = {
  Allocated: 'Allocated',
  Creating: 'Creating',
  /** Lazily restored: usable (it may be attached) while its backup's chunks still arrive. */
  Hydrating: 'Hydrating',
  Ready: 'Ready',
  Resizing: 'Resizing',
  Snapshotting: 'Snapshotting',
  RevertSnapshotting: 'RevertSnapshotting',
  Migrating: 'Migrating',
  Destroying: 'Destroying',
  Destroyed: 'Destroyed',
  Error: 'Error',
} as const;
export type VolumeStatus = (typeof VolumeStatus)[keyof typeof VolumeStatus];

export interface Volume extends Versioned {
  id: string;
  name: string;
  zoneId: string;
  /** The primary store it lives on; its size is reserved there (allocatedBytes) from placement on. */
  storeId?: string;
  templateId?: string;
  /** `linked`: a qcow2 overlay on the pool's template cache entry; `full`: an independent copy. */
  mode?: 'linked' | 'full' | 'blank';
  /** Whether this volume holds a reference on its template's cache entry (refCount). */
  holdsTemplateRef?: boolean;
  /** Whether this volume is counted in its template's `pendingVolumes` (from accept to reference). */
  holdsTemplate?: boolean;
  /**
   * The pool whose template cache reference this volume gave back, set in the write that gave it
   * back: a step that dies before it has evicted the cache entry finds it again from here.
   */
  releasedFrom?: string;
  /**
   * While a migration's last step runs: the copy it switched the volume away from, set in the
   * switch-over write (the volume stays Migrating, leased by that job, until the source is removed
   * and its template cache entry evicted if unused). A replayed or recovered run finds it here.
   */
  migratedFrom?: { jobId: string; storeId: string; path?: string; droppedTemplateRef: boolean };
  sizeBytes: number;
  format: ImageFormat;
  path?: string;
  tags: string[];
  /** The snapshot it was restored from, and which of its copies the restore reads. */
  sourceSnapshotId?: string;
  restoreFrom?: 'auto' | 'primary' | 'backup';
  /** Restored lazily (docs/backup-format.md, "Lazy restore"): Hydrating before Ready. */
  lazyRestore?: boolean;
  /** While Hydrating: the host serving the volume's export, the only one that can use it then. */
  hydrationHostId?: string;
  /**
   * While Hydrating: when the export's current chunk list was presigned and when its URLs expire,
   * and how many times it has been renewed (lazy-restore.ts renews it before it runs out).
   */
  hydrationUrls?: { issuedAt: string; expiresAt: string; renewals: number };
  /** Hosts granted access (grantAccess), e.g. the one running the VM. */
  accessHostIds: string[];
  status: VolumeStatus;
  statusReason?: string;
}

export const SnapshotStatus = {
  Allocated: 'Allocated',
  Creating: 'Creating',
  CreatedOnPrimary: 'CreatedOnPrimary',
  BackingUp: 'BackingUp',
  BackedUp: 'BackedUp',
  Destroying: 'Destroying',
  Destroyed: 'Destroyed',
  Error: 'Error',
} as const;
export type SnapshotStatus = (typeof SnapshotStatus)[keyof typeof SnapshotStatus];

export interface Snapshot extends Versioned {
  id: string;
  name: string;
  volumeId: string;
  status: SnapshotStatus;
  statusReason?: string;
  /** The policy that took it (retention only ever deletes its own policy's snapshots). */
  policyId?: string;
  /** The policy slot (ISO time) it was taken for: one snapshot per policy and slot. */
  slot?: string;
  /** Back it up to the image store as soon as it is taken. */
  backupRequested?: boolean;
  /** The volume's virtual size when it was taken (a restore creates a volume this big). */
  sizeBytes?: number;
  /** The job that took it (an idempotent retake returns this job). */
  takenByJobId?: string;
  /** While Destroying: the state to return to when the delete is refused before removing anything. */
  statusBeforeDelete?: SnapshotStatus;
}

export interface SnapshotInStore extends Versioned {
  snapshotId: string;
  storeId: string;
  /** Role of the store: `primary` holds the snapshot layer, `image` a backup (manifest + chunks). */
  storeRole?: 'primary' | 'image';
  status: ObjectInStoreStatus;
  /** Primary: the layer's path on the share. Image: the manifest's key, relative to the store. */
  path?: string;
  /** Image copies: the backup it was incremental from (every manifest still names every chunk). */
  parentSnapshotId?: string;
  /**
   * Image copies written since chunk holds follow the lineage: `own` when the backup holds every
   * chunk its manifest names, `lineage` when it holds only the chunks it computed and leaves the
   * ones carried over from {@link SnapshotInStore.inheritsFrom} to that backup (docs/backup-format.md).
   * Absent on copies from before; a backup on such a parent pins every chunk, as backups did then.
   */
  chunkHolds?: 'own' | 'lineage';
  /** With `chunkHolds: lineage`: the backup whose holds (or whose ancestors' holds) cover the carried chunks. */
  inheritsFrom?: string;
  /** Primary: the layer's bytes. Image: the bytes of non-zero chunks the manifest names. */
  sizeBytes?: number;
  virtualSizeBytes?: number;
  chunkSizeBytes?: number;
  /** sha256 of the manifest object, `{sha256}hex`. */
  checksum?: string;
  statusReason?: string;
}

export interface SnapshotPolicy extends Versioned {
  id: string;
  volumeId: string;
  /** `cron(...)` or `rate(...)`, in EventBridge Scheduler syntax. */
  schedule: string;
  /** IANA time zone the cron fields are read in. */
  timeZone: string;
  /** Snapshots of this policy kept; older ones are deleted after each new one. */
  keep: number;
  backup: boolean;
  name?: string;
}

export const JobState = {
  Pending: 'pending',
  Running: 'running',
  Succeeded: 'succeeded',
  Failed: 'failed',
} as const;
export type JobState = (typeof JobState)[keyof typeof JobState];

export interface JobError {
  code: string;
  message: string;
}

export interface Job extends Versioned {
  id: string;
  /** What the job does, e.g. `store.add`, `store.maintain`. */
  kind: string;
  target: { type: string; id: string };
  state: JobState;
  progress: number;
  progressDetail?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: JobError;
  /** The workflow execution that runs it (a Step Functions execution ARN on AWS). */
  executionId?: string;
  /** Its own lease while it is open (see JOB_LEASE_SECONDS in job-service.ts). */
  lease?: Lease;
  /** The flow it runs and the input it was started with (what the reconciler compensates with). */
  flow?: string;
  flowInput?: Record<string, unknown>;
  /**
   * Host commands of the job's steps, by call key (`<step>:<operation>:<n>`): a step run again after
   * it suspended (or after a crash) picks up the same command instead of starting the operation
   * again.
   */
  hostCommands?: Record<string, HostCommandRecord>;
  /** Values a step made once and every later run of it reuses (see stepOnce in step-scope.ts). */
  stepMemos?: Record<string, unknown>;
}

/** One host command a step sent, as recorded on its job. */
export interface HostCommandRecord {
  hostId: string;
  commandId: string;
  /** The request id the host runtime deduplicates on; the same for every run of the step. */
  requestId: string;
  sentAt: string;
  /** 1 for the first send; a step retried after the command failed sends attempt 2, … */
  attempt: number;
  /** The command ended in failure and a run of the step has seen it: a later run sends again. */
  failed?: boolean;
  /** How it failed, kept so a run after the last attempt can report it without sending again. */
  error?: { code: string; message: string; retryable: boolean };
}

/** A stored answer to a mutating request carrying an `Idempotency-Key`. */
export interface IdempotencyRecord extends Versioned {
  key: string;
  requestHash: string;
  statusCode: number;
  body: string;
  headers: Record<string, string>;
  /** A large answer is not kept: its replay re-reads the resource at this location. */
  bodyAt?: string;
  /** While the first request runs: after this (epoch ms) a repeat takes the record over. */
  lockedUntilMs?: number;
  /** Epoch seconds; DynamoDB TTL removes the record after this. */
  expiresAtEpoch: number;
}

/** Every entity type and its shape. */
export interface EntityMap {
  DataStore: DataStore;
  Host: Host;
  Template: Template;
  TemplateInStore: TemplateInStore;
  Volume: Volume;
  Snapshot: Snapshot;
  SnapshotInStore: SnapshotInStore;
  SnapshotPolicy: SnapshotPolicy;
  Job: Job;
  Idempotency: IdempotencyRecord;
}
export type EntityType = keyof EntityMap;
