/**
 * The REST API's wire shapes as the CLI sees them.
 *
 * These are declared here rather than imported from `functions/core/model.ts` on purpose: the CLI is
 * a client of the HTTP contract, not of the server's internals, and it must keep compiling (and keep
 * talking to older servers) while the domain model evolves behind the API.
 */

export type HostStatus = 'Up' | 'Disabled' | 'Down';

export interface Host {
  id: string;
  name: string;
  zoneId: string;
  clusterId: string;
  instanceId: string;
  hypervisor: string;
  status: HostStatus | string;
  attachedStoreIds: string[];
  /** What the host's runtime last reported about itself; absent until a probe has succeeded. */
  runtime?: HostRuntime;
  version: number;
  createdAt: string;
  updatedAt: string;
}

/** One tool a host operation needs: whether it is usable, its version, and what is wrong if not. */
export interface Prerequisite {
  ok: boolean;
  version?: string;
  problem?: string;
}

/**
 * A host runtime's report: its build and prerequisites. Keyed by name (today `node`, `qemuImg`,
 * `qemuNbd`) rather than a fixed shape, so that a server checking one more tool does not need a new CLI.
 */
export interface HostRuntime {
  build: string;
  platform: string;
  arch: string;
  prerequisites: Record<string, Prerequisite>;
  /** Every prerequisite is usable. */
  ready: boolean;
  /** The build is the one the control plane was deployed with. */
  current: boolean;
  checkedAt: string;
}

/** The result of a host.probe job (POST /hosts/{id}/probe); the same report is kept on the host. */
export interface HostProbeResult extends HostRuntime {
  hostId: string;
}

/** The 201 answer of POST /hosts: the host and the jobs registration started. */
export interface HostCreated extends Host {
  attachJobIds?: string[];
  probeJobId?: string;
}

export interface NewHost {
  name: string;
  zoneId: string;
  clusterId: string;
  instanceId: string;
  hypervisor?: string;
}

export type ScopeType = 'zone' | 'cluster' | 'host';

export interface StoreScope {
  type: ScopeType;
  zoneId: string;
  clusterId?: string;
  hostId?: string;
}

export type StoreRole = 'primary' | 'image';

export interface Store {
  id: string;
  name: string;
  provider: string;
  role: StoreRole | string;
  scope: StoreScope;
  details: Record<string, string>;
  capacityBytes: number;
  overprovisioning: number;
  disableThreshold: number;
  tags: string[];
  status: string;
  allocatedBytes: number;
  usedBytes: number;
  statusReason?: string;
  version: number;
  createdAt: string;
  updatedAt: string;
}

export interface NewStore {
  name: string;
  provider: string;
  role: StoreRole;
  scope: StoreScope;
  capacityBytes?: number;
  overprovisioning?: number;
  disableThreshold?: number;
  tags?: string[];
  details: Record<string, string>;
}

export interface StorePatch {
  name?: string;
  tags?: string[];
  capacityBytes?: number;
  overprovisioning?: number;
  disableThreshold?: number;
  status?: 'Up' | 'Disabled';
}

export interface StoreObject {
  path: string;
  sizeBytes: number;
  modifiedAt?: string;
  owner?: { type: string; id: string };
}

/** The result of a store.inventory job (POST /stores/{id}/inventory). */
export interface StoreInventory {
  storeId: string;
  /** Objects the storage holds, all of them, also past the ones listed. */
  total: number;
  /** How many of the `total` a row (volume, template, snapshot) owns. */
  owned: number;
  /** `objects` stops at the API's limit (1000) and `total` is more. */
  truncated: boolean;
  objects: StoreObject[];
}

/** One thing the orphan sweep found (POST /sweeps; the job result). */
export interface SweepFinding {
  storeId: string;
  kind: 'object' | 'upload' | 'chunk' | 'claim';
  /** The object's path, or the chunk's hash. */
  ref: string;
  uploadId?: string;
  reason: string;
  action: 'reported' | 'deleted' | 'skipped' | 'failed';
  error?: string;
}

/** The result of a reconcile.sweep job. */
export interface SweepReport {
  dryRun: boolean;
  stores: string[];
  counts: Record<SweepFinding['kind'], number>;
  deleted: number;
  failed: number;
  findings: SweepFinding[];
  findingsTruncated?: boolean;
}

export type JobState = 'pending' | 'running' | 'succeeded' | 'failed';

export interface Job {
  id: string;
  kind: string;
  target: { type: string; id: string };
  state: JobState;
  progress: number;
  progressDetail?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: { code: string; message: string };
  executionId?: string;
  createdAt: string;
  updatedAt: string;
}

/** The 202 answer of an asynchronous request that has no entity to show: the job to follow. */
export interface JobAccepted {
  job: Job;
}

/** What the API answers to an asynchronous request: the entity as it is now and the job that finishes it. */
export interface Accepted<T> {
  store: T;
  job: Job;
}

export interface Page<T> {
  items: T[];
  cursor?: string;
}

export interface Health {
  status: string;
  version?: string;
}

export interface ErrorEnvelope {
  error: { code: string; message: string; field?: string };
}

export type TemplateFormat = 'qcow2' | 'raw' | 'vhd' | 'vmdk' | 'iso';
export type TemplateType = 'template' | 'iso';

/** One physical copy of a template on an image store. */
export interface TemplateCopy {
  storeId: string;
  status: string;
  path?: string;
  sizeBytes?: number;
  checksum?: string;
  /** 0–100 while the copy is being written. */
  progress?: number;
  bytesTransferred?: number;
  statusReason?: string;
  refCount: number;
}

export interface Template {
  id: string;
  name: string;
  type: TemplateType | string;
  format: TemplateFormat | string;
  zoneId?: string;
  url?: string;
  checksum?: string;
  virtualSizeBytes?: number;
  /** 'Ready' when any copy is Ready, else the most advanced copy state. */
  status: string;
  copies: TemplateCopy[];
  version: number;
  createdAt: string;
  updatedAt: string;
}

/** POST /templates: the image store downloads the image from `url`. */
export interface NewTemplate {
  name: string;
  url: string;
  format: TemplateFormat;
  type: TemplateType;
  checksum?: string;
  zoneId?: string;
  storeId?: string;
}

/** POST /templates/uploads: the client sends the bytes itself, in parts, to presigned URLs. */
export interface NewTemplateUpload {
  name: string;
  format: TemplateFormat;
  type: TemplateType;
  sizeBytes: number;
  checksum?: string;
  zoneId?: string;
  storeId?: string;
}

export interface UploadPart {
  partNumber: number;
  /** A presigned PUT valid until the upload's `expiresAt`; null in a replayed answer (renew it). */
  url: string | null;
}

export interface TemplateUpload {
  uploadId: string;
  storeId: string;
  partSizeBytes: number;
  parts: UploadPart[];
  expiresAt: string;
}

export interface TemplateUploadStarted {
  template: Template;
  upload: TemplateUpload;
  /** A replay of the start (Idempotency-Key): the URLs were not kept; renew them. */
  grantsOmitted?: boolean;
}

/** The answer of `POST /templates/{id}/uploads/{uploadId}/parts`. */
export interface UploadPartUrls {
  parts: { partNumber: number; url: string | null }[];
  /** When these URLs stop working. */
  expiresAt: string;
  grantsOmitted?: boolean;
}

export interface CompletedPart {
  partNumber: number;
  etag: string;
}

/** The 202 answer of the asynchronous template requests. */
export interface TemplateAccepted {
  template: Template;
  job: Job;
}

export type VolumeStatus =
  | 'Allocated'
  | 'Creating'
  | 'Ready'
  | 'Resizing'
  | 'Snapshotting'
  | 'RevertSnapshotting'
  | 'Migrating'
  | 'Destroying'
  | 'Destroyed'
  | 'Error';

/** How a volume made from a template shares the template's bytes. */
export type VolumeMode = 'linked' | 'full';

export interface Volume {
  id: string;
  name: string;
  zoneId: string;
  storeId?: string;
  templateId?: string;
  sizeBytes: number;
  format: string;
  path?: string;
  tags: string[];
  status: VolumeStatus | string;
  statusReason?: string;
  accessHostIds?: string[];
  version: number;
  createdAt: string;
  updatedAt: string;
}

/** POST /volumes (and its ?dryRun=true twin). */
export interface NewVolume {
  name: string;
  zoneId: string;
  /** Required for a blank volume; with a template it defaults to the template's virtual size. */
  sizeBytes?: number;
  templateId?: string;
  storeId?: string;
  clusterId?: string;
  tags?: string[];
  mode?: VolumeMode;
  /** Restore: the volume starts as a copy of this snapshot (its size by default). */
  fromSnapshotId?: string;
}

/** One primary store the allocator considered for a volume, and what it decided. */
export interface PlacementCandidate {
  storeId: string;
  name: string;
  accepted: boolean;
  reason: string;
  freeBytesAfter?: number;
}

/** The 200 answer of POST /volumes?dryRun=true: nothing is created. */
export interface PlacementExplanation {
  placement: { chosen?: PlacementCandidate; candidates: PlacementCandidate[] };
}

/** The 202 answer of the asynchronous volume requests. */
export interface VolumeAccepted {
  volume: Volume;
  job: Job;
}

export interface VolumeResize {
  sizeBytes: number;
  allowShrink?: boolean;
}

/** The result of a volume.grantAccess job: how the host reaches the volume. */
export interface VolumeAccessGranted {
  volumeId: string;
  hostId: string;
  action: 'grant';
  uri: string;
  expiresAt?: string;
}

export type SnapshotStatus =
  | 'Allocated'
  | 'Creating'
  | 'CreatedOnPrimary'
  | 'BackingUp'
  | 'BackedUp'
  | 'Destroying'
  | 'Destroyed'
  | 'Error';

/** One physical copy of a snapshot: the layer on the primary store, or a backup on an image store. */
export interface SnapshotCopy {
  snapshotId: string;
  storeId: string;
  storeRole?: StoreRole;
  status: string;
  /** Primary: the layer's path on the share. Image: the manifest's key. */
  path?: string;
  sizeBytes?: number;
  virtualSizeBytes?: number;
  statusReason?: string;
}

export interface Snapshot {
  id: string;
  name: string;
  volumeId: string;
  status: SnapshotStatus | string;
  statusReason?: string;
  /** The policy that took it, for scheduled snapshots. */
  policyId?: string;
  /** The policy slot (ISO time) it was taken for. */
  slot?: string;
  /** The volume's virtual size when it was taken. */
  sizeBytes?: number;
  /** Present on GET /snapshots/{id}. */
  copies?: SnapshotCopy[];
  version?: number;
  createdAt: string;
  updatedAt?: string;
}

/** POST /volumes/{id}/snapshots. */
export interface NewSnapshot {
  name: string;
  /** Back it up to the image store as soon as it is taken. */
  backup?: boolean;
}

/** The 202 answer of the asynchronous snapshot requests (take, backup). */
export interface SnapshotAccepted {
  snapshot: Snapshot;
  job: Job;
}

/** DELETE /snapshots/{id}?from=: which copies go (default all). */
export type SnapshotCopySelector = 'primary' | 'image' | 'all';

/** The result of a snapshot.revert job. */
export interface SnapshotReverted {
  snapshotId: string;
  volumeId: string;
}

/** The result of a snapshot.delete job: the stores a copy was removed from. */
export interface SnapshotDeleted {
  snapshotId: string;
  removed: string[];
}

/** What a backup job reports in its result (and progressDetail while it runs). */
export interface BackupCounters {
  bytesRead?: number;
  bytesUploaded?: number;
  chunksReused?: number;
  chunksUploaded?: number;
  /** Only the extents changed since the previous backup were read. */
  incremental?: boolean;
}

export interface SnapshotPolicy {
  id: string;
  volumeId: string;
  /** `rate(...)` or `cron(...)`, in EventBridge Scheduler syntax. */
  schedule: string;
  /** IANA time zone the cron fields are read in. */
  timeZone: string;
  /** Snapshots of this policy kept; older ones are deleted after each new one. */
  keep: number;
  backup: boolean;
  name?: string;
  version?: number;
  createdAt?: string;
  updatedAt?: string;
}

/** POST /snapshot-policies. */
export interface NewSnapshotPolicy {
  volumeId: string;
  schedule: string;
  timeZone?: string;
  keep: number;
  backup?: boolean;
  name?: string;
}
