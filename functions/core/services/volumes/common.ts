/**
 * What the volume flows share: their dependencies, the fencing check every step makes, and the one
 * way a volume operation starts (the volume moved into its transitional state, its job recorded with
 * the flow and input a recovery needs, both in one write; then the execution).
 */
import type { ProviderRegistry } from '../../../../drivers/sdk/registry.js';
import type { DataObjectRef, DriverContext, TemplateInstallStrategy } from '../../../../drivers/sdk/types.js';
import { ConflictError } from '../../errors.js';
import type { DataStore, Job, Volume, VolumeStatus } from '../../model.js';
import type { Clock, FlowName, Repository, WorkflowPort, WriteOp } from '../../ports.js';
import { systemClock, Write } from '../../ports.js';
import { volumeMachine } from '../../state-machines.js';
import type { JobService, Launch } from '../job-service.js';

/** How long a volume flow's lease on the volume lasts between renewals. */
export const VOLUME_LEASE_SECONDS = 60 * 60;

export interface VolumeDeps {
  repo: Repository;
  registry: ProviderRegistry;
  workflows: WorkflowPort;
  jobs: JobService;
  driverContext: (jobId: string) => DriverContext;
  selectHost: (storeIds: string[]) => Promise<{ id: string }>;
  /** Ids of the snapshots a volume has (a volume with snapshots cannot be deleted). */
  hasSnapshots: (volumeId: string) => Promise<string[]>;
  /** The TemplateInstallStrategy of a primary store's provider, if it has one. */
  installStrategy: (provider: string) => TemplateInstallStrategy | undefined;
  /** Restores a snapshot into a new volume's file on its pool (SnapshotService's backups). */
  restoreSnapshot?: (input: {
    jobId: string;
    snapshotId: string;
    volume: Volume;
    pool: DataStore;
    from: 'auto' | 'primary' | 'backup';
    /** Restore lazily (./../lazy-restore.ts): the step returns once the volume is flattened. */
    lazy?: boolean;
  }) => Promise<{ path: string }>;
  /** Stops and removes an unfinished lazy restore (volume-create's compensation). */
  abortLazyRestore?: (input: { jobId: string; volume: Volume; pool: DataStore }) => Promise<void>;
  clock?: Clock;
}

/** What every volume step is given: its job, and the volume that job holds. */
export interface Step {
  jobId: string;
  volumeId: string;
}

/** A flow's launch, typed by its FlowName. */
export interface VolumeLaunch extends Launch {
  flow: FlowName;
}

/** The volume, if the job `input.jobId` holds it in `status`; a ConflictError otherwise (fencing). */
export async function held(
  repo: Repository,
  input: Step,
  status: VolumeStatus,
  doing: string,
): Promise<Volume> {
  const volume = await repo.require({ type: 'Volume', id: input.volumeId });
  if (volume.status !== status || volume.lease?.owner !== input.jobId) {
    throw new ConflictError(`volume ${volume.id} is ${volume.status}, not being ${doing} by ${input.jobId}`, {
      state: volume.status,
    });
  }
  return volume;
}

/** The write that moves a Ready (or other `from`) volume into a leased state for `jobId`. */
export function volumeMove(
  volume: Volume,
  to: VolumeStatus,
  jobId: string,
  from: VolumeStatus | VolumeStatus[],
): WriteOp {
  return Write.transition({
    key: { type: 'Volume', id: volume.id },
    machine: volumeMachine,
    from,
    to,
    expectedVersion: volume.version,
    lease: { owner: jobId, ttlSeconds: VOLUME_LEASE_SECONDS },
  });
}

/**
 * Starts a job's execution (named by the job, so a second start is the same execution) and marks the
 * job running. When the start itself fails the job and what it holds stay recorded: the job's lease
 * runs out and the reconciler compensates with the recorded launch.
 */
export async function launch(deps: VolumeDeps, jobId: string, l: VolumeLaunch): Promise<Job> {
  const { executionId } = await deps.workflows.start(l.flow, jobId, l.input);
  return deps.jobs.started(jobId, executionId);
}

/** When a lease taken now for `seconds` runs out (ISO-8601), by the deps' clock. */
export function expiry(deps: VolumeDeps, seconds: number): string {
  return new Date((deps.clock ?? systemClock).now().getTime() + seconds * 1000).toISOString();
}

/** How drivers see a volume: its ref on its pool. */
export function volumeObject(volume: Volume): DataObjectRef {
  return { kind: 'volume', id: volume.id, format: volume.format, path: volume.path };
}

/**
 * The write that gives back a create's hold on its template (`Template.pendingVolumes`), or none
 * when the volume holds none. It goes in the same transaction as the write that clears
 * `holdsTemplate`, so the hold is given back exactly once.
 */
export function templateHoldRelease(volume: Volume): WriteOp[] {
  if (!volume.holdsTemplate || !volume.templateId) return [];
  return [Write.counter({ type: 'Template', id: volume.templateId }, 'pendingVolumes', -1)];
}

/** Takes (+1) or gives back (-1) a reference on a pool's template cache entry. */
export function templateRefWrite(templateId: string, storeId: string, delta: 1 | -1): WriteOp {
  return Write.counter({ type: 'TemplateInStore', id: templateId, storeId }, 'refCount', delta);
}
