/** The backup-verify flow. */

import { z } from 'zod';
import { VerifyOptionsSchema, VerifyPageSchema } from '../../functions/core/verify-options.js';
import { compensate, type FlowDefinition, task } from '../flow.js';
import { id, sfnError } from '../steps.js';

export const backupVerify = {
  comment:
    "backup-verify: reads the backup chunks of one image store (all, or a sample), recomputes each one's SHA-256 from its bytes and compares it with its key. The chunk index is walked one bounded page per task run (the cursor and the running counts travel in the state), so every run is short and a failed page is retried where it stopped. Chunks found corrupt or missing are marked in the index, so the next backup uploads them again from primary storage; the job result has the counts, the damaged chunks and the snapshots whose backups hold them.",
  fn: 'store',
  steps: {
    verifyChunks: z.object({
      jobId: id,
      storeId: id,
      options: VerifyOptionsSchema,
      page: VerifyPageSchema,
    }),
    failVerify: z.object({ jobId: id, error: sfnError }),
  },
  results: { verifyChunks: VerifyPageSchema },
  startAt: 'Begin',
  states: {
    Begin: {
      Type: 'Pass',
      Comment: 'the first page starts at the beginning of the index, with nothing counted',
      Result: { value: { done: false } },
      ResultPath: '$.page',
      Next: 'Verify',
    },
    Verify: task({
      comment: 'verifyChunks',
      task: 'verifyChunks',
      input: { jobId: '$.jobId', storeId: '$.storeId', options: '$.options', page: '$.page.value' },
      timeoutSeconds: 300,
      resultPath: '$.page',
      select: { 'value.$': '$.Payload' },
      next: 'More',
    }),
    More: {
      Type: 'Choice',
      Comment: 'the last page ended the job; otherwise the next page',
      Choices: [{ Variable: '$.page.value.done', BooleanEquals: true, Next: 'Verified' }],
      Default: 'Verify',
    },
    Verified: { Type: 'Succeed' },
    Compensate: compensate({ task: 'failVerify', input: ['jobId'], next: 'Failed' }),
    Failed: {
      Type: 'Fail',
      Error: 'BackupVerifyFailed',
      Cause: 'The verify job did not complete; the job says why.',
    },
  },
} satisfies FlowDefinition;
