/**
 * Ports: what the domain needs from the outside world. Adapters in `functions/adapters/aws` and
 * `functions/adapters/local` implement them; core code imports no AWS SDK.
 */
import type { HostError, HostRequest } from '../../drivers/sdk/host-protocol.js';
import type { EntityMap, EntityType, Host, Lease, SnapshotPolicy } from './model.js';
import type { StateMachine } from './state-machines.js';

/** Key of one entity: its type, its id, and for per-store rows the store id. */
export interface EntityKey<T extends EntityType = EntityType> {
  type: T;
  id: string;
  /** For TemplateInStore and SnapshotInStore: the store id. */
  storeId?: string;
}

export interface Page<T> {
  items: T[];
  /** Opaque; pass back to get the next page. Absent on the last page. */
  cursor?: string;
}

export interface ListOptions {
  limit?: number;
  cursor?: string;
  /** Equality filters on top-level fields (applied after the page is read, so pages may be short). */
  filter?: Record<string, string | number | boolean>;
}

/** States of an entity type that has a state machine. */
export type StatusOf<T extends EntityType> = EntityMap[T] extends { status: infer S extends string }
  ? S
  : never;

export interface TransitionRequest<T extends EntityType> {
  key: EntityKey<T>;
  machine: StateMachine<StatusOf<T>>;
  /** States the entity may be in now; the write fails with a ConflictError otherwise. */
  from: StatusOf<T> | readonly StatusOf<T>[];
  to: StatusOf<T>;
  /** When given, the write also requires this exact version (optimistic locking). */
  expectedVersion?: number;
  /**
   * Lease for a transitional target state: owner (job id) and seconds until it expires.
   * Required when `to` is leased in the machine; the lease is cleared when `to` is not.
   */
  lease?: { owner: string; ttlSeconds: number };
  /**
   * When leaving a transitional state: only the lease owner may move it on (fencing).
   * A stale worker whose lease was taken over gets a ConflictError.
   */
  leaseOwner?: string;
  /** Other fields to set in the same write. */
  changes?: Partial<EntityMap[T]>;
}

/**
 * One write of a {@link Repository.transact}, with the same conditions as the single-item method of
 * the same name. Build them with {@link Write}.
 */
export type WriteOp =
  | { op: 'create'; type: EntityType; entity: object }
  | { op: 'update'; key: EntityKey; expectedVersion: number; changes: object }
  | { op: 'transition'; request: TransitionRequest<EntityType> }
  | {
      op: 'counter';
      key: EntityKey;
      field: string;
      delta: number;
      max?: number;
      /** Only while this field holds one of these values (e.g. a cache entry that is Ready). */
      when?: { field: string; oneOf: readonly (string | number)[] };
      /** Only while this field is absent (e.g. a template no delete has begun on). */
      unlessSet?: string;
    }
  | { op: 'delete'; key: EntityKey; expectedVersion?: number };

/** Typed builders of {@link WriteOp}s. */
export const Write = {
  create<T extends EntityType>(
    type: T,
    entity: Omit<EntityMap[T], 'version' | 'createdAt' | 'updatedAt'>,
  ): WriteOp {
    return { op: 'create', type, entity };
  },
  update<T extends EntityType>(
    key: EntityKey<T>,
    expectedVersion: number,
    changes: Partial<EntityMap[T]>,
  ): WriteOp {
    return { op: 'update', key, expectedVersion, changes };
  },
  transition<T extends EntityType>(request: TransitionRequest<T>): WriteOp {
    return { op: 'transition', request: request as unknown as TransitionRequest<EntityType> };
  },
  counter<T extends EntityType>(
    key: EntityKey<T>,
    field: keyof EntityMap[T] & string,
    delta: number,
    options: {
      max?: number;
      when?: { field: keyof EntityMap[T] & string; oneOf: readonly (string | number)[] };
      unlessSet?: keyof EntityMap[T] & string;
    } = {},
  ): WriteOp {
    return { op: 'counter', key, field, delta, ...options };
  },
  delete<T extends EntityType>(key: EntityKey<T>, expectedVersion?: number): WriteOp {
    return expectedVersion === undefined ? { op: 'delete', key } : { op: 'delete', key, expectedVersion };
  },
};

/**
 * The table. Every write is conditional: creates fail if the entity exists, updates and transitions
 * require the expected version and/or state. Losing a race is always a ConflictError.
 */
export interface Repository {
  get<T extends EntityType>(key: EntityKey<T>): Promise<EntityMap[T] | undefined>;
  /** Like get, but throws NotFoundError. */
  require<T extends EntityType>(key: EntityKey<T>): Promise<EntityMap[T]>;
  /** Creates with version 1; ConflictError if it exists. */
  create<T extends EntityType>(
    type: T,
    entity: Omit<EntityMap[T], 'version' | 'createdAt' | 'updatedAt'>,
  ): Promise<EntityMap[T]>;
  /** Sets fields if the stored version is `expectedVersion`; bumps the version. */
  update<T extends EntityType>(
    key: EntityKey<T>,
    expectedVersion: number,
    changes: Partial<EntityMap[T]>,
  ): Promise<EntityMap[T]>;
  /**
   * Sets fields if `field` currently holds one of `oneOf` (no version check). For records that many
   * writers update at once, such as a job's progress from parallel workflow branches.
   */
  updateWhere<T extends EntityType>(
    key: EntityKey<T>,
    condition: { field: keyof EntityMap[T] & string; oneOf: readonly (string | number)[] },
    changes: Partial<EntityMap[T]>,
  ): Promise<EntityMap[T]>;
  /** Moves an entity along its state machine; see {@link TransitionRequest}. */
  transition<T extends EntityType>(request: TransitionRequest<T>): Promise<EntityMap[T]>;
  /** Deletes if the stored version is `expectedVersion` (or unconditionally when omitted). */
  delete<T extends EntityType>(key: EntityKey<T>, expectedVersion?: number): Promise<void>;
  /** Lists entities of one type, oldest first. */
  list<T extends EntityType>(type: T, options?: ListOptions): Promise<Page<EntityMap[T]>>;
  /** The per-store rows of one template or snapshot (its copies), in store-id order. */
  listCopies<T extends 'TemplateInStore' | 'SnapshotInStore'>(type: T, id: string): Promise<EntityMap[T][]>;
  /** Lists the per-store rows and volumes held by one store. */
  listInStore(storeId: string, options?: ListOptions): Promise<Page<EntityMap[EntityType]>>;
  /** Adds or removes members of a string-set field atomically (commutative; no version check). */
  /**
   * Sets one entry of a map field (`field.entry = value`) if `condition.field` holds one of
   * `condition.oneOf`, leaving the map's other entries alone (concurrent writers of different entries
   * do not overwrite each other). Creates the map when the entity has none.
   */
  putMapEntry<T extends EntityType>(
    key: EntityKey<T>,
    field: keyof EntityMap[T] & string,
    entry: string,
    value: unknown,
    condition: { field: keyof EntityMap[T] & string; oneOf: readonly (string | number)[] },
  ): Promise<void>;
  /**
   * Takes over an expired lease for recovery: only if it is still `owner`'s and expired before
   * `now`, its expiry becomes now + `ttlSeconds` (the owner stays, so the flow's own compensation,
   * fenced on it, may run). False when the lease was renewed, moved on or released meanwhile.
   */
  claimExpiredLease<T extends EntityType>(
    key: EntityKey<T>,
    owner: string,
    now: Date,
    ttlSeconds: number,
  ): Promise<boolean>;
  /**
   * Sets the expiry of `owner`'s lease to `at` (a deferred recovery hands its claim back as expired,
   * so the next pass retries at once). False when the lease is not `owner`'s.
   */
  expireLease<T extends EntityType>(key: EntityKey<T>, owner: string, at: Date): Promise<boolean>;
  /**
   * Moves the lease of an entity on (a heartbeat): its expiry becomes now + `ttlSeconds`, only if the
   * lease is still `owner`'s. False when it is not (recovered, released or taken over).
   */
  renewLease<T extends EntityType>(key: EntityKey<T>, owner: string, ttlSeconds: number): Promise<boolean>;
  updateSet<T extends EntityType>(
    key: EntityKey<T>,
    field: keyof EntityMap[T] & string,
    add: string[],
    remove: string[],
    /** Only if this field holds one of these values (ConflictError otherwise). */
    when?: { field: keyof EntityMap[T] & string; oneOf: readonly (string | number)[] },
  ): Promise<EntityMap[T]>;
  /**
   * Adds `delta` to a numeric field atomically, failing with ConflictError when the result would
   * exceed `max` or go below zero. Used for capacity reservations and reference counts.
   */
  addToCounter<T extends EntityType>(
    key: EntityKey<T>,
    field: keyof EntityMap[T] & string,
    delta: number,
    options?: { max?: number },
  ): Promise<EntityMap[T]>;
  /**
   * Applies every write or none (DynamoDB TransactWriteItems; at most 100 writes, each item once).
   * When a condition fails, nothing is written and the error is the one the single-item method
   * would have thrown for the first write that failed (ConflictError or NotFoundError).
   */
  transact(writes: readonly WriteOp[]): Promise<void>;
  /** Entities whose lease expired before `now`, for the reconciler. */
  listExpiredLeases(
    now: Date,
    options?: ListOptions,
  ): Promise<Page<EntityMap[EntityType] & { lease: Lease }>>;
  /** The backup chunk index, kept in the same table. */
  readonly chunks: ChunkIndex;
}

/**
 * Which backup chunks an image store holds and who needs them (docs/backup-format.md). Each chunk
 * has a set of holders: the snapshots whose manifests name it, and restores in progress. A chunk
 * with no holder may be collected; collection first claims the chunk, so a backup that pins it
 * meanwhile waits (Unavailable) instead of relying on an object about to disappear.
 */
export interface ChunkIndex {
  /**
   * Adds `holder` to every chunk's holders (idempotent: a set). Returns the hashes whose objects are
   * not stored yet (`unstored`: the caller uploads those), among them those a verify job found
   * corrupt or missing (`corrupt`: never reused on the strength of what the store says), and the
   * hashes stored before stored checksums were verified (`unverified`: reuse only once the store
   * shows a SHA-256 checksum equal to the hash). Throws UnavailableError while one of them is being
   * collected (retry shortly); a claim older than any collector can live is taken over.
   */
  pin(storeId: string, hashes: readonly string[], holder: string): Promise<PinResult>;
  /**
   * Records that the chunks' objects are stored in full with a stored SHA-256 checksum equal to
   * their hash (verified presence): uploaded with `x-amz-checksum-sha256`, or seen so by HeadObject.
   * Clears a verify job's corrupt mark.
   */
  markStored(storeId: string, hashes: readonly string[]): Promise<void>;
  /**
   * One page of the store's chunks, for jobs that walk the index step by step (the verify job): at
   * most `limit` entries from one table Scan page, and the cursor to continue from (absent at the end).
   */
  scanPage(storeId: string, options: { cursor?: string; limit: number }): Promise<ChunkPage>;
  /**
   * A verify job read the chunk and its bytes do not hash to its key, or it is gone: the index stops
   * counting it as stored (the next backup naming it uploads it again, restores needing it are
   * refused up front). Only if the entry is still the one the job read (`storedAt`, absent for an
   * entry from before it was kept) and nobody collects it; false when it changed meanwhile.
   */
  markCorrupt(
    storeId: string,
    hash: string,
    mark: { jobId: string; reason: 'corrupt' | 'missing'; storedAt?: string },
  ): Promise<boolean>;
  /**
   * Removes `holder` from the chunks. With `collect`, each chunk left with no holder is claimed
   * for deletion and returned: delete its object, then {@link ChunkIndex.forget} it.
   */
  release(
    storeId: string,
    hashes: readonly string[],
    holder: string,
    options: { collect: boolean },
  ): Promise<{ collectable: string[] }>;
  /** Drops claimed chunks from the index once their objects are gone. */
  forget(storeId: string, hashes: readonly string[]): Promise<void>;
  /** Every chunk the index holds for one store (the orphan sweep; a table scan, paged inside). */
  scan(storeId: string): Promise<ChunkEntry[]>;
  /**
   * Claims a chunk for deletion when it has no index entry (its object was left by a backup that
   * never recorded it), so a backup pinning it meanwhile waits. False when an entry exists.
   */
  claimUnindexed(storeId: string, hash: string): Promise<boolean>;
  /** Takes over a collector's claim made at `claimedAt` (it died); false when the claim moved. */
  reclaim(storeId: string, hash: string, claimedAt: string): Promise<boolean>;
  /**
   * When a verify job last marked a chunk of the store corrupt or missing (ISO), if ever. Recorded
   * before the chunk's own mark. An incremental backup whose parent began before it pins every chunk
   * (and so finds the damaged ones) instead of inheriting the parent's holds unchecked.
   */
  lastDamageAt(storeId: string): Promise<string | undefined>;
  /** The holders of one chunk (diagnostics and tests). */
  holders(storeId: string, hash: string): Promise<{ holders: string[]; stored: boolean } | undefined>;
}

/** A claim older than this belongs to a collector that died (Lambda's 15-minute limit, plus margin). */
export const STALE_CLAIM_MS = 20 * 60 * 1000;

/** One chunk of the index, as the orphan sweep and the verify job read it. */
export interface ChunkEntry {
  hash: string;
  holders: string[];
  stored: boolean;
  /** Stored with a verified SHA-256 checksum (see {@link ChunkIndex.markStored}); false on older entries. */
  verified?: boolean;
  /** When it was last marked stored (ISO); absent on entries written before it was recorded. */
  storedAt?: string;
  /** Set by a verify job that found it corrupt or missing, until a backup stores it again. */
  corrupt?: { jobId: string; reason: 'corrupt' | 'missing'; at: string };
  /** When a collector claimed it for deletion (ISO), if one did. */
  claimedAt?: string;
  /** When a holder was last removed (ISO); absent on entries written before it was recorded. */
  releasedAt?: string;
}

/** What {@link ChunkIndex.pin} says about the chunks it pinned. */
export interface PinResult {
  /** Not stored: upload (or prove present) before a manifest may name them. */
  unstored: string[];
  /** Among `unstored`: marked corrupt or missing by a verify job, so always uploaded again. */
  corrupt: string[];
  /** Stored, but from before stored checksums were verified: reuse only after checking the checksum. */
  unverified: string[];
}

/** A page of {@link ChunkIndex.scanPage}. */
export interface ChunkPage {
  entries: ChunkEntry[];
  cursor?: string;
}

/** The state a command on a host is in, as the endpoint channel sees it. */
export interface CommandStatus {
  state: 'pending' | 'running' | 'succeeded' | 'failed';
  progress?: number;
  progressDetail?: Record<string, unknown>;
  result?: unknown;
  error?: HostError;
}

/**
 * How work reaches a host: SSM Run Command on AWS, a child process in the embedded stack.
 * `send` is idempotent on `request.requestId`.
 */
export interface EndpointChannel {
  send(host: Host, request: HostRequest): Promise<{ commandId: string }>;
  status(host: Host, commandId: string): Promise<CommandStatus>;
  /** Asks the host to stop a command (SSM CancelCommand); it ends soon after as failed. */
  cancel?(host: Host, commandId: string): Promise<void>;
}

/** The workflows Strata runs; each has one definition in `statemachines/`. */
export const FlowName = {
  StoreAttach: 'store-attach',
  StoreMaintenance: 'store-maintenance',
  TemplateIngest: 'template-ingest',
  TemplateCopy: 'template-copy',
  VolumeCreate: 'volume-create',
  VolumeDelete: 'volume-delete',
  VolumeResize: 'volume-resize',
  VolumeMigrate: 'volume-migrate',
  SnapshotTake: 'snapshot-take',
  SnapshotBackup: 'snapshot-backup',
  SnapshotPolicy: 'snapshot-policy',
  SnapshotRevert: 'snapshot-revert',
  SnapshotDelete: 'snapshot-delete',
  StoreInventory: 'store-inventory',
  HostProbe: 'host-probe',
  VolumeAccess: 'volume-access',
  OrphanSweep: 'orphan-sweep',
  BackupVerify: 'backup-verify',
} as const;
export type FlowName = (typeof FlowName)[keyof typeof FlowName];

/** Starts workflow executions (Step Functions on AWS, aws-local-stepfunctions locally). */
export interface WorkflowPort {
  /**
   * Starts `flow` with `input`. `name` (the job id) makes the start idempotent: starting the same
   * name twice yields the same execution.
   */
  start(flow: FlowName, name: string, input: Record<string, unknown>): Promise<{ executionId: string }>;
  /** Stops an execution (StopExecution); one that has already ended is left as it is. */
  stop?(executionId: string, cause: string): Promise<void>;
}

/**
 * Where snapshot-policy schedules live: EventBridge Scheduler on AWS (one schedule per policy), an
 * in-process timer in the embedded stack. Each firing starts the snapshot-policy flow with
 * `{ policyId, scheduledTime }`.
 */
export interface SchedulerPort {
  /** Creates the policy's schedule, or replaces it when it exists. */
  upsert(policy: SnapshotPolicy): Promise<void>;
  /** Removes the policy's schedule; a schedule that does not exist is not an error. */
  remove(policyId: string): Promise<void>;
}

/** An opened download: the body streams; nothing is buffered whole. */
export interface FetchedStream {
  body: import('node:stream').Readable;
  contentLength?: number;
  finalUrl: string;
}

/** Opens operator-supplied URLs under the SSRF rules (see functions/core/url-policy.ts). */
export interface UrlFetcher {
  open(url: string, options: { signal?: AbortSignal }): Promise<FetchedStream>;
  /** Refusals that can be known without fetching (scheme, credentials, literal blocked IPs); throws InputError. */
  checkUpFront(url: string): void;
}

export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };
