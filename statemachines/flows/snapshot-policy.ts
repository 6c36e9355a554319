/** The snapshot-policy flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, task, transient } from '../flow.js';
import { id, sfnError } from '../steps.js';

export const snapshotPolicy = {
  comment:
    "snapshot-policy: started by the policy's schedule (EventBridge Scheduler on AWS, the in-process scheduler locally) with { policyId, scheduledTime }. Run takes the slot's snapshot (the slot is the scheduled time to the minute and names the snapshot, so however often a slot is delivered there is one snapshot; a busy volume is Strata.Unavailable and retried with backoff; a deleted policy makes the run a no-op). The flow then polls the snapshot job every 10 s (bounded by maxPolls) and applies retention: the policy's snapshots beyond the newest `keep` get a snapshot-delete job each (SnapshotService.delete: merged, never orphaning a child). A failed snapshot job or an exhausted wait goes to Compensate, which records why, and the execution fails.",
  fn: 'store',
  steps: {
    runPolicy: z.object({ policyId: id, scheduledTime: z.iso.datetime({ offset: true }) }),
    policyJobStatus: z.object({
      jobId: id,
      polls: z.number().int().nonnegative(),
      maxPolls: z.number().int().positive(),
    }),
    applyRetention: z.object({ policyId: id }),
    // Loose on purpose: a run refused for a malformed start still gets its failure recorded.
    failPolicyRun: z.object({
      policyId: z.string().max(256),
      scheduledTime: z.string().max(64),
      error: sfnError,
    }),
  },
  results: {
    runPolicy: z.object({
      skipped: z.boolean(),
      reason: z.string().nullable(),
      snapshotId: z.string().nullable(),
      jobId: z.string().nullable(),
      slot: z.string(),
    }),
    policyJobStatus: z.object({
      done: z.boolean(),
      state: z.string(),
      polls: z.number().int().nonnegative(),
    }),
    applyRetention: z.object({
      kept: z.array(z.string()),
      deleting: z.array(z.object({ snapshotId: z.string(), jobId: z.string() })),
      skipped: z.array(z.object({ snapshotId: z.string(), status: z.string(), reason: z.string() })),
    }),
  },
  startAt: 'Run',
  states: {
    Run: task({
      comment: 'runPolicy',
      task: 'runPolicy',
      input: ['policyId', 'scheduledTime'],
      timeoutSeconds: 300,
      retry: [transient(5, 8, 120)],
      resultPath: '$.run',
      select: {
        'skipped.$': '$.Payload.skipped',
        'reason.$': '$.Payload.reason',
        'snapshotId.$': '$.Payload.snapshotId',
        'jobId.$': '$.Payload.jobId',
        'slot.$': '$.Payload.slot',
      },
      next: 'Taken',
    }),
    Taken: {
      Type: 'Choice',
      Comment: "a deleted policy's run ends here",
      Choices: [
        {
          Variable: '$.run.skipped',
          BooleanEquals: true,
          Next: 'Skipped',
        },
      ],
      Default: 'StartWaiting',
    },
    Skipped: {
      Type: 'Succeed',
    },
    StartWaiting: {
      Type: 'Pass',
      Result: {
        polls: 0,
      },
      ResultPath: '$.poll',
      Next: 'PollJob',
    },
    PollJob: task({
      comment: 'policyJobStatus',
      task: 'policyJobStatus',
      input: {
        jobId: '$.run.jobId',
        polls: '$.poll.polls',
        maxPolls: 1440,
      },
      timeoutSeconds: 60,
      resultPath: '$.poll',
      select: {
        'done.$': '$.Payload.done',
        'state.$': '$.Payload.state',
        'polls.$': '$.Payload.polls',
      },
      next: 'JobDone',
    }),
    JobDone: {
      Type: 'Choice',
      Choices: [
        {
          Variable: '$.poll.done',
          BooleanEquals: true,
          Next: 'Retention',
        },
      ],
      Default: 'WaitForJob',
    },
    WaitForJob: {
      Type: 'Wait',
      Seconds: 10,
      Next: 'PollJob',
    },
    Retention: task({
      comment: 'applyRetention',
      task: 'applyRetention',
      input: ['policyId'],
      timeoutSeconds: 900,
      resultPath: '$.retention',
      select: {
        'kept.$': '$.Payload.kept',
        'deleting.$': '$.Payload.deleting',
        'skipped.$': '$.Payload.skipped',
      },
    }),
    Compensate: compensate({
      task: 'failPolicyRun',
      input: ['policyId', 'scheduledTime'],
      next: 'Failed',
      timeoutSeconds: 60,
    }),
    Failed: {
      Type: 'Fail',
      Error: 'SnapshotPolicyFailed',
      Cause: "The policy run failed; the failPolicyRun log entry and the snapshot's job say why.",
    },
  },
} satisfies FlowDefinition;
