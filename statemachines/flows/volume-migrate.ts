/** The volume-migrate flow. */

import { z } from 'zod';
import { compensate, type FlowDefinition, task } from '../flow.js';
import { failing, id, volumeStep } from '../steps.js';

export const volumeMigrate = {
  comment:
    "volume-migrate: the destination space is reserved and the volume Migrating. Copy through a host that mounts both stores (flattening a linked clone) and compare, or, when no host reaches both, stage through the zone's image store (flattened export, presigned multipart upload, verified pull on the destination); then switch the volume over and remove the source. On failure the partial copy and its reservation go and the volume stays, Ready, where it was; a failure after the switch-over rolls forward instead (the volume stays on the destination, the job succeeds with a warning).",
  fn: 'store',
  steps: {
    copyToStore: volumeStep.extend({ destStoreId: id }),
    finishMigrate: volumeStep.extend({ destStoreId: id, path: z.string(), via: z.string() }),
    failMigrate: failing(volumeStep.extend({ destStoreId: id })),
  },
  results: {
    copyToStore: z.object({ path: z.string(), via: z.string() }),
    failMigrate: z.object({ rolledForward: z.boolean() }),
  },
  startAt: 'Copy',
  states: {
    Copy: task({
      comment: 'copyToStore',
      task: 'copyToStore',
      host: true,
      input: ['jobId', 'volumeId', 'destStoreId'],
      timeoutSeconds: 900,
      resultPath: '$.copied',
      select: {
        'path.$': '$.Payload.path',
        'via.$': '$.Payload.via',
      },
      next: 'Finish',
    }),
    Finish: task({
      comment: 'finishMigrate',
      task: 'finishMigrate',
      host: true,
      input: {
        jobId: '$.jobId',
        volumeId: '$.volumeId',
        destStoreId: '$.destStoreId',
        path: '$.copied.path',
        via: '$.copied.via',
      },
      timeoutSeconds: 300,
      resultPath: '$.finished',
      select: {
        done: true,
      },
    }),
    Compensate: compensate({
      task: 'failMigrate',
      host: true,
      input: ['jobId', 'volumeId', 'destStoreId'],
      select: { 'rolledForward.$': '$.Payload.rolledForward' },
      next: 'RolledForward?',
    }),
    'RolledForward?': {
      Type: 'Choice',
      Comment:
        'A failure after the switch-over rolls forward: the volume is on the destination and the job succeeded with a warning.',
      Choices: [{ Variable: '$.compensation.rolledForward', BooleanEquals: true, Next: 'Migrated' }],
      Default: 'Failed',
    },
    Migrated: {
      Type: 'Succeed',
      Comment: 'Migrated, though its last step failed; the job result and the volume say what was left.',
    },
    Failed: {
      Type: 'Fail',
      Error: 'VolumeMigrateFailed',
      Cause: 'The volume could not be migrated; it is unchanged on its source store and the job says why.',
    },
  },
} satisfies FlowDefinition;
