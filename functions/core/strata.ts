/**
 * The composition root of the domain: every service wired to the ports it is given. The Lambda
 * handlers build one with AWS adapters, the embedded stack with local ones; nothing else differs.
 */
import type { ProviderRegistry } from '../../drivers/sdk/registry.js';
import type { DriverContext, Logger } from '../../drivers/sdk/types.js';
import { HostEndpointSelector } from './endpoint-selector.js';
import { NotFoundError, UnavailableError } from './errors.js';
import { ChannelHostInvoker } from './host-invoker.js';
import { JobState } from './model.js';
import type {
  Clock,
  EndpointChannel,
  EntityKey,
  Repository,
  SchedulerPort,
  UrlFetcher,
  WorkflowPort,
} from './ports.js';
import { systemClock } from './ports.js';
import { BackupVerify } from './services/backup-verify.js';
import { DataMotionService, streamCopyStrategy } from './services/data-motion.js';
import { DataStoreService, type DriverContextOptions, type StoreDeps } from './services/datastore-service.js';
import { HostProbeService } from './services/host-probe-service.js';
import { HostService } from './services/host-service.js';
import { ImageService } from './services/image-service.js';
import { JobService } from './services/job-service.js';
import { LazyRestore } from './services/lazy-restore.js';
import { OrphanSweep } from './services/orphan-sweep.js';
import { Reconciler } from './services/reconciler.js';
import { SnapshotPolicyService } from './services/snapshot-policy-service.js';
import { SnapshotService } from './services/snapshot-service.js';
import { StoreFlows } from './services/store-flows.js';
import { VolumeService } from './services/volume-service.js';

export interface StrataPorts {
  repo: Repository;
  channel: EndpointChannel;
  workflows: WorkflowPort;
  registry: ProviderRegistry;
  /** Opens operator-supplied template URLs under the SSRF rules. */
  fetcher: UrlFetcher;
  logger: Logger;
  /** Handed to drivers as `ctx.services` (e.g. the S3 client factory the s3 provider needs). */
  driverServices: Record<string, unknown>;
  clock?: Clock;
  /**
   * Snapshot-policy schedules (EventBridge Scheduler on AWS, the in-process scheduler locally).
   * Functions that never create or delete policies (the workflow tasks) go without one.
   */
  scheduler?: SchedulerPort;
  /**
   * The host runtime build this control plane was deployed with. Sent with every host request; a
   * host running another build refuses it with HostBuildMismatch (upgrade the host). Unset: no check.
   */
  hostBuild?: string;
  /** Host command polling: first interval and the longest one, in ms (the embedded stack shortens them). */
  hostPollMs?: number;
  hostMaxPollMs?: number;
  /**
   * How long one run of a workflow step waits for a host command before it suspends and the state
   * machine waits instead (seconds on AWS; see functions/core/step-scope.ts). Default 10 s.
   */
  hostWaitBudgetMs?: number;
  /** Longest Wait a suspended step asks for, in seconds (default 30; tests shrink it). */
  hostMaxWaitSeconds?: number;
}

/**
 * A lease a heartbeat renews lives this long: many missed heartbeats (a suspended step checks in
 * every ≤ 30 s) before the reconciler may treat the work as dead.
 */
export const HEARTBEAT_LEASE_SECONDS = 15 * 60;

export class Strata {
  readonly jobs: JobService;
  readonly hosts: HostService;
  readonly probes: HostProbeService;
  readonly selector: HostEndpointSelector;
  readonly stores: DataStoreService;
  readonly storeFlows: StoreFlows;
  readonly reconciler: Reconciler;
  readonly sweep: OrphanSweep;
  /** Backup verify jobs: chunks re-read and re-hashed, damaged ones marked for re-upload. */
  readonly verify: BackupVerify;
  readonly motion: DataMotionService;
  readonly images: ImageService;
  readonly volumes: VolumeService;
  readonly snapshots: SnapshotService;
  readonly policies: SnapshotPolicyService;

  constructor(readonly ports: StrataPorts) {
    const clock = ports.clock ?? systemClock;
    const workflows = recordingFlows(ports);
    this.jobs = new JobService(ports.repo);
    this.hosts = new HostService(ports.repo);
    this.selector = new HostEndpointSelector(this.hosts);
    this.probes = new HostProbeService({
      repo: ports.repo,
      workflows,
      jobs: this.jobs,
      driverContext: (jobId) => this.driverContext(jobId),
      ...(ports.hostBuild ? { expectedBuild: ports.hostBuild } : {}),
      clock,
    });
    const deps: StoreDeps = {
      repo: ports.repo,
      registry: ports.registry,
      workflows,
      jobs: this.jobs,
      hosts: this.hosts,
      driverContext: (jobId, options) => this.driverContext(jobId, options),
      selectHost: (storeIds) => this.selector.select({ storeIds }),
      clock,
    };
    this.stores = new DataStoreService(deps);
    this.storeFlows = new StoreFlows(deps);
    this.reconciler = new Reconciler(ports.repo, this.jobs, {
      clock,
      workflows,
      channel: ports.channel,
    });
    this.sweep = new OrphanSweep({
      ...deps,
      listObjects: (storeId, jobId) => this.stores.listObjects(storeId, jobId),
      driverContext: (jobId) => this.driverContext(jobId),
    });
    this.verify = new BackupVerify({ ...deps, driverContext: (jobId) => this.driverContext(jobId) });
    this.motion = new DataMotionService(ports.registry, [streamCopyStrategy(ports.registry)]);
    this.images = new ImageService({ ...deps, motion: this.motion, fetcher: ports.fetcher });
    const lazyRestore = new LazyRestore(deps);
    this.volumes = new VolumeService({
      ...deps,
      hasSnapshots: (volumeId) => this.snapshots.holdingVolume(volumeId),
      restoreSnapshot: (input) =>
        input.lazy ? lazyRestore.restoreInto(input) : this.snapshots.backups.restoreInto(input),
      abortLazyRestore: (input) => lazyRestore.abort(input),
      installStrategy: (provider) =>
        ports.registry.has(provider) ? ports.registry.get(provider).templateInstall : undefined,
      clock,
    });
    this.snapshots = new SnapshotService(deps);
    this.policies = new SnapshotPolicyService({
      repo: ports.repo,
      snapshots: this.snapshots,
      jobs: this.jobs,
      scheduler: ports.scheduler ?? noScheduler,
      logger: ports.logger,
      clock,
    });
  }

  /** How long one run of a host step waits on a host before it suspends. */
  get hostWaitBudgetMs(): number {
    return this.ports.hostWaitBudgetMs ?? 10_000;
  }

  /**
   * The heartbeat of a suspended host step: every lease the job holds on the step's entities (the
   * volume, snapshot, store or template the input names, and their store copies) moves on to
   * {@link HEARTBEAT_LEASE_SECONDS} from now, never shorter than it was. A lease held by another
   * job, or already recovered, is left alone.
   */
  async heartbeat(jobId: string, input: unknown): Promise<void> {
    const ids = (input ?? {}) as Record<string, unknown>;
    const str = (k: string) => (typeof ids[k] === 'string' ? (ids[k] as string) : undefined);
    const keys: EntityKey[] = [];
    const volumeId = str('volumeId');
    const snapshotId = str('snapshotId');
    const storeId = str('storeId');
    const templateId = str('templateId');
    if (volumeId) keys.push({ type: 'Volume', id: volumeId });
    if (storeId) keys.push({ type: 'DataStore', id: storeId });
    if (snapshotId) {
      keys.push({ type: 'Snapshot', id: snapshotId });
      const snapshot = await this.ports.repo.get({ type: 'Snapshot', id: snapshotId });
      if (snapshot && !volumeId) keys.push({ type: 'Volume', id: snapshot.volumeId });
      for (const c of await this.ports.repo.listCopies('SnapshotInStore', snapshotId)) {
        keys.push({ type: 'SnapshotInStore', id: snapshotId, storeId: c.storeId });
      }
    }
    if (templateId) {
      keys.push({ type: 'Template', id: templateId });
      for (const c of await this.ports.repo.listCopies('TemplateInStore', templateId)) {
        keys.push({ type: 'TemplateInStore', id: templateId, storeId: c.storeId });
      }
    }
    await Promise.all([
      this.jobs.renew(jobId),
      ...keys.map((k) => this.ports.repo.renewLease(k, jobId, HEARTBEAT_LEASE_SECONDS)),
    ]);
  }

  /** The context a driver call runs with, for one job. */
  driverContext(jobId: string, options: DriverContextOptions = {}): DriverContext {
    const { progressRange } = options;
    const { repo, channel, logger, driverServices } = this.ports;
    return {
      jobId,
      logger,
      services: driverServices,
      host: new ChannelHostInvoker({
        repo,
        channel,
        jobId,
        pollMs: this.ports.hostPollMs,
        ...(this.ports.hostBuild ? { build: this.ports.hostBuild } : {}),
        maxPollMs: this.ports.hostMaxPollMs,
        onDispatch: (hostId, delta) => this.selector.track(hostId, delta),
        ...(this.ports.hostMaxWaitSeconds !== undefined
          ? { maxWaitSeconds: this.ports.hostMaxWaitSeconds }
          : {}),
        ...(progressRange
          ? {
              onProgress: async (hostId: string, percent: number, detail?: Record<string, unknown>) => {
                const [lo, hi] = progressRange;
                await this.jobs
                  .progress(jobId, lo + ((hi - lo) * percent) / 100, { ...detail, hostId })
                  .catch(() => undefined);
              },
            }
          : {}),
      }),
      progress: async (percent, detail) => {
        await this.jobs.progress(jobId, percent, detail).catch(() => undefined);
      },
    };
  }
}

/** Where no scheduler is configured, creating or deleting a policy says so instead of half-working. */
const noScheduler: SchedulerPort = {
  upsert: () => Promise.reject(new UnavailableError('snapshot-policy schedules are not configured here')),
  remove: () => Promise.reject(new UnavailableError('snapshot-policy schedules are not configured here')),
};

/**
 * The workflow port, recording on each job the flow it starts and its input before starting it, so
 * that the reconciler can run that flow's compensation for a job whose execution died.
 */
function recordingFlows(ports: StrataPorts): WorkflowPort {
  const inner = ports.workflows;
  return {
    async start(flow, name, input) {
      await ports.repo
        .updateWhere(
          { type: 'Job', id: name },
          { field: 'state', oneOf: [JobState.Pending, JobState.Running] },
          { flow, flowInput: input },
        )
        .catch((e: unknown) => {
          if (!(e instanceof NotFoundError)) throw e;
        });
      return inner.start(flow, name, input);
    },
    // Looked up at call time: a function's ports are built lazily, and touching one it was not
    // configured for would fail every request of that function.
    async stop(executionId: string, cause: string) {
      if (!inner.stop) throw new UnavailableError('this workflow port cannot stop executions');
      await inner.stop(executionId, cause);
    },
  };
}
