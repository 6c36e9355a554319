/** The snapshot-backup flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, retryOn, task, transient } from '../flow.js';
import { failing, snapshotStep } from '../steps.js';

export const snapshotBackup = {
  comment:
    "snapshot-backup: the snapshot is BackingUp (leased by the job). Scan, one host command: the host hashes the snapshot in fixed chunks, reading only the extents changed since the volume's previous backup when that backup is the snapshot's base, and uploads each chunk neither that backup nor the store holds to the job's staging prefix (a presigned POST policy) while the bytes are in hand; the control plane records the manifest's chunk list as a plan, pins the chunks in the chunk index (only those this scan computed when the backup inherits its parent's holds), and moves the staged chunks under their content address once the store confirms their SHA-256. Upload, only when a chunk is still missing (one the previous backup named but the store lost): presigned PUTs for exactly those chunks. Commit: the manifest is written last, so no manifest ever names a missing chunk. On failure the pins are released (stored chunks stay for a retry to reuse) and the snapshot is CreatedOnPrimary again, still restorable from primary storage.",
  fn: 'store',
  steps: {
    scanBackup: snapshotStep,
    uploadBackup: snapshotStep,
    commitBackup: snapshotStep.extend({
      upload: z.object({
        chunksUploaded: z.number().int().nonnegative(),
        bytesRead: z.number().int().nonnegative(),
        bytesUploaded: z.number().int().nonnegative(),
      }),
    }),
    failBackup: failing(snapshotStep),
  },
  results: {
    scanBackup: z.object({ toUpload: z.number().int().nonnegative() }),
    uploadBackup: z.object({
      chunksUploaded: z.number().int().nonnegative(),
      bytesRead: z.number().int().nonnegative(),
      bytesUploaded: z.number().int().nonnegative(),
    }),
  },
  startAt: 'Scan',
  states: {
    Scan: task({
      comment: 'scanBackup',
      task: 'scanBackup',
      host: true,
      input: ['jobId', 'snapshotId'],
      timeoutSeconds: 900,
      retry: [
        transient(),
        retryOn(['Strata.StoreBusy'], {
          intervalSeconds: 5,
          maxAttempts: 20,
          backoffRate: 1.5,
          maxDelaySeconds: 60,
        }),
      ],
      resultPath: '$.scan',
      select: {
        'toUpload.$': '$.Payload.toUpload',
      },
      next: 'Missing',
    }),
    Missing: {
      Type: 'Choice',
      Comment: 'every chunk is stored (the usual case): commit; else a second host command uploads the rest',
      Choices: [{ Variable: '$.scan.toUpload', NumericGreaterThan: 0, Next: 'Upload' }],
      Default: 'NothingToUpload',
    },
    NothingToUpload: {
      Type: 'Pass',
      Comment: 'the scan uploaded every chunk the store lacked',
      Result: { chunksUploaded: 0, bytesRead: 0, bytesUploaded: 0 },
      ResultPath: '$.upload',
      Next: 'Commit',
    },
    Upload: task({
      comment: 'uploadBackup',
      task: 'uploadBackup',
      host: true,
      input: ['jobId', 'snapshotId'],
      timeoutSeconds: 900,
      retry: [
        transient(),
        retryOn(['Strata.TransferFailed'], {
          intervalSeconds: 5,
          maxAttempts: 3,
          backoffRate: 2,
          maxDelaySeconds: 60,
        }),
      ],
      resultPath: '$.upload',
      select: {
        'chunksUploaded.$': '$.Payload.chunksUploaded',
        'bytesRead.$': '$.Payload.bytesRead',
        'bytesUploaded.$': '$.Payload.bytesUploaded',
      },
      next: 'Commit',
    }),
    Commit: task({
      comment: 'commitBackup',
      task: 'commitBackup',
      host: true,
      input: ['jobId', 'snapshotId', 'upload'],
      timeoutSeconds: 300,
      resultPath: '$.commit',
      select: {
        done: true,
      },
    }),
    Compensate: compensate({
      task: 'failBackup',
      host: true,
      input: ['jobId', 'snapshotId'],
      next: 'Failed',
    }),
    Failed: {
      Type: 'Fail',
      Error: 'SnapshotBackupFailed',
      Cause: 'The backup did not complete; the job says why. The snapshot is still on primary storage.',
    },
  },
} satisfies FlowDefinition;
