/**
 * The store workflows' task function: one Lambda serving every step of the store, host, volume and
 * snapshot flows, chosen by `task`. Step inputs are validated, and errors leave with a stable name
 * for the state machine's Retry and Catch.
 */
import { z } from 'zod';
import { hostTasks } from '../../statemachines/definitions.js';
import { SweepOptionsSchema } from '../core/services/orphan-sweep.js';
import type { Strata } from '../core/strata.js';
import { createTaskHandler, type TaskTable } from './task-handler.js';

const id = z.string().min(1).max(128);
const hostResult = z.object({
  hostId: id,
  ok: z.boolean(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
const sfnError = z.object({ Error: z.string().optional(), Cause: z.string().optional() });
const attach = z.object({
  jobId: id,
  storeId: id,
  mode: z.enum(['initialize', 'attach']),
  hostIds: z.array(id).optional(),
});
const volumeStep = z.object({ jobId: id, volumeId: id });
const snapshotStep = z.object({ jobId: id, snapshotId: id });
const maintenance = z.object({ jobId: id, storeId: id, action: z.enum(['enter', 'cancel']) });
const snapshotDelete = snapshotStep.extend({ from: z.enum(['all', 'primary', 'image']) });
const storeStep = z.object({ jobId: id, storeId: id });
const hostStep = z.object({ jobId: id, hostId: id });
const volumeAccess = volumeStep.extend({ hostId: id, action: z.enum(['grant', 'revoke']) });
/** What a policy's schedule starts the snapshot-policy flow with; the time is ISO-8601. */
const policyRun = z.object({ policyId: id, scheduledTime: z.iso.datetime({ offset: true }) });

export const storeTasks = {
  prepareAttach: (s: Strata, i: unknown) => s.storeFlows.prepareAttach(attach.parse(i)),
  attachHost: (s: Strata, i: unknown) =>
    s.storeFlows.attachHost(z.object({ jobId: id, storeId: id, hostId: id }).parse(i)),
  finishAttach: (s: Strata, i: unknown) =>
    s.storeFlows.finishAttach(attach.extend({ hostIds: z.array(id), results: z.array(hostResult) }).parse(i)),
  failAttach: (s: Strata, i: unknown) => s.storeFlows.failAttach(attach.extend({ error: sfnError }).parse(i)),
  beginMaintenance: (s: Strata, i: unknown) => s.storeFlows.beginMaintenance(maintenance.parse(i)),
  checkStoreIdle: (s: Strata, i: unknown) => s.storeFlows.checkStoreIdle(maintenance.parse(i)),
  maintainHost: (s: Strata, i: unknown) =>
    s.storeFlows.maintainHost(maintenance.extend({ hostId: id }).parse(i)),
  completeMaintenance: (s: Strata, i: unknown) =>
    s.storeFlows.completeMaintenance(
      maintenance.extend({ hostIds: z.array(id), results: z.array(hostResult) }).parse(i),
    ),
  failMaintenance: (s: Strata, i: unknown) =>
    s.storeFlows.failMaintenance(maintenance.extend({ error: sfnError }).parse(i)),
  ensureTemplateCache: (s: Strata, i: unknown) => s.volumes.ensureTemplateCache(volumeStep.parse(i)),
  createOnPool: (s: Strata, i: unknown) => s.volumes.createOnPool(volumeStep.parse(i)),
  finishCreate: (s: Strata, i: unknown) =>
    s.volumes.finishCreate(volumeStep.extend({ path: z.string() }).parse(i)),
  failCreate: (s: Strata, i: unknown) =>
    s.volumes.failCreate(volumeStep.extend({ error: sfnError }).parse(i)),
  resizeOnPool: (s: Strata, i: unknown) =>
    s.volumes.resizeOnPool(
      volumeStep.extend({ sizeBytes: z.number().int().positive(), allowShrink: z.boolean() }).parse(i),
    ),
  failResize: (s: Strata, i: unknown) =>
    s.volumes.failResize(
      volumeStep.extend({ sizeBytes: z.number().int().positive(), error: sfnError }).parse(i),
    ),
  copyToStore: (s: Strata, i: unknown) =>
    s.volumes.copyToStore(volumeStep.extend({ destStoreId: id }).parse(i)),
  finishMigrate: (s: Strata, i: unknown) =>
    s.volumes.finishMigrate(
      volumeStep.extend({ destStoreId: id, path: z.string(), via: z.string() }).parse(i),
    ),
  failMigrate: (s: Strata, i: unknown) =>
    s.volumes.failMigrate(volumeStep.extend({ destStoreId: id, error: sfnError }).parse(i)),
  takeOnPool: (s: Strata, i: unknown) => s.snapshots.takeOnPool(snapshotStep.parse(i)),
  finishTake: (s: Strata, i: unknown) =>
    s.snapshots.finishTake(
      snapshotStep.extend({ path: z.string(), sizeBytes: z.number().nonnegative() }).parse(i),
    ),
  failTake: (s: Strata, i: unknown) =>
    s.snapshots.failTake(snapshotStep.extend({ error: sfnError }).parse(i)),
  scanBackup: (s: Strata, i: unknown) => s.snapshots.backups.scanBackup(snapshotStep.parse(i)),
  uploadBackup: (s: Strata, i: unknown) => s.snapshots.backups.uploadBackup(snapshotStep.parse(i)),
  commitBackup: (s: Strata, i: unknown) =>
    s.snapshots.backups.commitBackup(
      snapshotStep
        .extend({
          upload: z.object({
            chunksUploaded: z.number().int().nonnegative(),
            bytesRead: z.number().int().nonnegative(),
            bytesUploaded: z.number().int().nonnegative(),
          }),
        })
        .parse(i),
    ),
  failBackup: (s: Strata, i: unknown) =>
    s.snapshots.backups.failBackup(snapshotStep.extend({ error: sfnError }).parse(i)),
  revertOnPool: (s: Strata, i: unknown) => s.snapshots.revertOnPool(snapshotStep.parse(i)),
  failRevert: (s: Strata, i: unknown) =>
    s.snapshots.failRevert(snapshotStep.extend({ error: sfnError }).parse(i)),
  deleteSnapshot: (s: Strata, i: unknown) => s.snapshots.deleteCopies(snapshotDelete.parse(i)),
  failSnapshotDelete: (s: Strata, i: unknown) =>
    s.snapshots.failDelete(snapshotDelete.extend({ error: sfnError }).parse(i)),
  sweepOrphans: (s: Strata, i: unknown) => {
    const input = z.object({ jobId: id, options: SweepOptionsSchema }).parse(i);
    return s.sweep.run(input.jobId, input.options);
  },
  failSweep: (s: Strata, i: unknown) => s.sweep.fail(z.object({ jobId: id, error: sfnError }).parse(i)),
  inventoryStore: (s: Strata, i: unknown) => s.stores.inventoryStore(storeStep.parse(i)),
  failInventory: (s: Strata, i: unknown) =>
    s.stores.failInventory(storeStep.extend({ error: sfnError }).parse(i)),
  volumeAccess: (s: Strata, i: unknown) => s.volumes.changeAccess(volumeAccess.parse(i)),
  failVolumeAccess: (s: Strata, i: unknown) =>
    s.volumes.failAccess(volumeAccess.extend({ error: sfnError }).parse(i)),
  probeHost: (s: Strata, i: unknown) => s.probes.probeHost(hostStep.parse(i)),
  failProbe: (s: Strata, i: unknown) => s.probes.failProbe(hostStep.extend({ error: sfnError }).parse(i)),
  destroyVolume: (s: Strata, i: unknown) => s.volumes.destroy(volumeStep.parse(i)),
  failDestroy: (s: Strata, i: unknown) =>
    s.volumes.failDestroy(volumeStep.extend({ error: sfnError }).parse(i)),
  runPolicy: (s: Strata, i: unknown) => s.policies.runPolicy(policyRun.parse(i)),
  policyJobStatus: (s: Strata, i: unknown) =>
    s.policies.policyJobStatus(
      z
        .object({
          jobId: id,
          polls: z.number().int().nonnegative(),
          maxPolls: z.number().int().positive(),
        })
        .parse(i),
    ),
  applyRetention: (s: Strata, i: unknown) => s.policies.applyRetention(z.object({ policyId: id }).parse(i)),
  failPolicyRun: (s: Strata, i: unknown) =>
    // Loose on purpose: a run refused for a malformed start still gets its failure recorded.
    s.policies.failPolicyRun(
      z
        .object({ policyId: z.string().max(256), scheduledTime: z.string().max(64), error: sfnError })
        .parse(i),
    ),
} satisfies TaskTable;

/** The task names this function serves (checked against the flows in tests). */
export const storeTaskNames: readonly string[] = Object.keys(storeTasks);

export function createStoreTasksHandler(getStrata: () => Promise<Strata> | Strata) {
  return createTaskHandler(storeTasks, getStrata, hostTasks('store'));
}
