/**
 * Asks hosts what runtime they run: the build, and whether Node.js, qemu-img and qemu-nbd are
 * there. Registration probes each new host; `POST /hosts/{id}/probe` probes again after an upgrade.
 * The answer is kept on the Host row (`runtime`), so `strata hosts get` shows it.
 */
import { PROBE_OPERATION, RUNTIME_PROVIDER } from '../../../drivers/sdk/host-build.js';
import type { HostRuntimeReport } from '../../../drivers/sdk/host-probe.js';
import type { DriverContext } from '../../../drivers/sdk/types.js';
import { UnavailableError } from '../errors.js';
import { newId } from '../ids.js';
import type { HostRuntime, Job } from '../model.js';
import { type Clock, FlowName, type Repository, systemClock, type WorkflowPort } from '../ports.js';
import type { JobService, WorkflowFailure } from './job-service.js';

export interface HostProbeDeps {
  repo: Repository;
  workflows: WorkflowPort;
  jobs: JobService;
  driverContext: (jobId: string) => DriverContext;
  /** The build this control plane expects hosts to run; unset: every build is current. */
  expectedBuild?: string;
  clock?: Clock;
}

interface Step {
  jobId: string;
  hostId: string;
}

export class HostProbeService {
  constructor(private readonly deps: HostProbeDeps) {}

  /** Starts the host-probe flow for a registered host. */
  async probe(hostId: string): Promise<{ job: Job }> {
    const host = await this.deps.repo.require({ type: 'Host', id: hostId });
    const jobId = newId('job');
    await this.deps.jobs.create('host.probe', { type: 'host', id: host.id }, jobId);
    try {
      const { executionId } = await this.deps.workflows.start(FlowName.HostProbe, jobId, { jobId, hostId });
      return { job: await this.deps.jobs.started(jobId, executionId) };
    } catch (e) {
      const reason = `could not start ${FlowName.HostProbe}: ${(e as Error).message}`;
      await this.deps.jobs.fail(jobId, { code: 'WorkflowStartFailed', message: reason });
      throw new UnavailableError(reason, { jobId }, { cause: e });
    }
  }

  /** host-probe: runs the runtime's probe on the host and records the report. */
  async probeHost(input: Step): Promise<HostRuntime> {
    const report = await this.deps.driverContext(input.jobId).host.run<HostRuntimeReport>(input.hostId, {
      provider: RUNTIME_PROVIDER,
      operation: PROBE_OPERATION,
      args: {},
      jobId: input.jobId,
      deadlineSeconds: 120,
    });
    const runtime: HostRuntime = {
      ...report,
      current: !this.deps.expectedBuild || report.build === this.deps.expectedBuild,
      checkedAt: (this.deps.clock ?? systemClock).now().toISOString(),
    };
    await this.deps.repo.updateWhere(
      { type: 'Host', id: input.hostId },
      { field: 'id', oneOf: [input.hostId] },
      { runtime },
    );
    await this.deps.jobs.succeed(input.jobId, { hostId: input.hostId, ...runtime });
    return runtime;
  }

  async failProbe(input: Step & { error: WorkflowFailure }): Promise<void> {
    await this.deps.jobs.failFromFlow(input.jobId, input.error, 'HostProbeFailed');
  }
}
