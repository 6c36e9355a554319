/**
 * The store workflows' task function: one Lambda serving every step of the store, host, volume and
 * snapshot flows, chosen by `task`. Step inputs are validated, and errors leave with a stable name
 * for the state machine's Retry and Catch.
 */
import { hostTasks } from '../../statemachines/definitions.js';
import { backupVerify } from '../../statemachines/flows/backup-verify.js';
import { hostProbe } from '../../statemachines/flows/host-probe.js';
import { orphanSweep } from '../../statemachines/flows/orphan-sweep.js';
import { snapshotBackup } from '../../statemachines/flows/snapshot-backup.js';
import { snapshotDelete } from '../../statemachines/flows/snapshot-delete.js';
import { snapshotPolicy } from '../../statemachines/flows/snapshot-policy.js';
import { snapshotRevert } from '../../statemachines/flows/snapshot-revert.js';
import { snapshotTake } from '../../statemachines/flows/snapshot-take.js';
import { storeAttach } from '../../statemachines/flows/store-attach.js';
import { storeInventory } from '../../statemachines/flows/store-inventory.js';
import { storeMaintenance } from '../../statemachines/flows/store-maintenance.js';
import { volumeAccess } from '../../statemachines/flows/volume-access.js';
import { volumeCreate } from '../../statemachines/flows/volume-create.js';
import { volumeDelete } from '../../statemachines/flows/volume-delete.js';
import { volumeMigrate } from '../../statemachines/flows/volume-migrate.js';
import { volumeResize } from '../../statemachines/flows/volume-resize.js';
import type { Strata } from '../core/strata.js';
import { bindTasks, createTaskHandler } from './task-handler.js';

/** The step contracts of every flow this function serves. */
const steps = {
  ...storeAttach.steps,
  ...storeMaintenance.steps,
  ...storeInventory.steps,
  ...hostProbe.steps,
  ...volumeCreate.steps,
  ...volumeDelete.steps,
  ...volumeResize.steps,
  ...volumeMigrate.steps,
  ...volumeAccess.steps,
  ...snapshotTake.steps,
  ...snapshotBackup.steps,
  ...snapshotRevert.steps,
  ...snapshotDelete.steps,
  ...snapshotPolicy.steps,
  ...orphanSweep.steps,
  ...backupVerify.steps,
};

/** Their result contracts. */
const results = {
  ...storeAttach.results,
  ...storeMaintenance.results,
  ...storeInventory.results,
  ...hostProbe.results,
  ...volumeCreate.results,
  ...volumeDelete.results,
  ...volumeResize.results,
  ...volumeMigrate.results,
  ...volumeAccess.results,
  ...snapshotTake.results,
  ...snapshotBackup.results,
  ...snapshotRevert.results,
  ...snapshotDelete.results,
  ...snapshotPolicy.results,
  ...orphanSweep.results,
  ...backupVerify.results,
};

export const storeTasks = bindTasks(steps, results, {
  prepareAttach: (s, i) => s.storeFlows.prepareAttach(i),
  attachHost: (s, i) => s.storeFlows.attachHost(i),
  finishAttach: (s, i) => s.storeFlows.finishAttach(i),
  failAttach: (s, i) => s.storeFlows.failAttach(i),
  beginMaintenance: (s, i) => s.storeFlows.beginMaintenance(i),
  checkStoreIdle: (s, i) => s.storeFlows.checkStoreIdle(i),
  maintainHost: (s, i) => s.storeFlows.maintainHost(i),
  completeMaintenance: (s, i) => s.storeFlows.completeMaintenance(i),
  failMaintenance: (s, i) => s.storeFlows.failMaintenance(i),
  inventoryStore: (s, i) => s.stores.inventoryStore(i),
  failInventory: (s, i) => s.stores.failInventory(i),
  probeHost: (s, i) => s.probes.probeHost(i),
  failProbe: (s, i) => s.probes.failProbe(i),
  ensureTemplateCache: (s, i) => s.volumes.creation.ensureTemplateCache(i),
  createOnPool: (s, i) => s.volumes.creation.createOnPool(i),
  finishCreate: (s, i) => s.volumes.creation.finishCreate(i),
  failCreate: (s, i) => s.volumes.creation.failCreate(i),
  destroyVolume: (s, i) => s.volumes.deletion.destroy(i),
  failDestroy: (s, i) => s.volumes.deletion.failDestroy(i),
  resizeOnPool: (s, i) => s.volumes.resizing.resizeOnPool(i),
  failResize: (s, i) => s.volumes.resizing.failResize(i),
  copyToStore: (s, i) => s.volumes.migration.copyToStore(i),
  finishMigrate: (s, i) => s.volumes.migration.finishMigrate(i),
  failMigrate: (s, i) => s.volumes.migration.failMigrate(i),
  volumeAccess: (s, i) => s.volumes.access.changeAccess(i),
  failVolumeAccess: (s, i) => s.volumes.access.failAccess(i),
  takeOnPool: (s, i) => s.snapshots.taking.takeOnPool(i),
  finishTake: (s, i) => s.snapshots.taking.finishTake(i),
  failTake: (s, i) => s.snapshots.taking.failTake(i),
  scanBackup: (s, i) => s.snapshots.backups.scanBackup(i),
  uploadBackup: (s, i) => s.snapshots.backups.uploadBackup(i),
  commitBackup: (s, i) => s.snapshots.backups.commitBackup(i),
  failBackup: (s, i) => s.snapshots.backups.failBackup(i),
  revertOnPool: (s, i) => s.snapshots.reverting.revertOnPool(i),
  failRevert: (s, i) => s.snapshots.reverting.failRevert(i),
  deleteSnapshot: (s, i) => s.snapshots.deleting.deleteCopies(i),
  failSnapshotDelete: (s, i) => s.snapshots.deleting.failDelete(i),
  runPolicy: (s, i) => s.policies.runPolicy(i),
  policyJobStatus: (s, i) => s.policies.policyJobStatus(i),
  applyRetention: (s, i) => s.policies.applyRetention(i),
  failPolicyRun: (s, i) => s.policies.failPolicyRun(i),
  sweepOrphans: (s, i) => s.sweep.run(i.jobId, i.options),
  failSweep: (s, i) => s.sweep.fail(i),
  verifyChunks: (s, i) => s.verify.verifyPage(i),
  failVerify: (s, i) => s.verify.fail(i),
});

/** The task names this function serves (checked against the flows in tests). */
export const storeTaskNames: readonly string[] = Object.keys(storeTasks);

export function createStoreTasksHandler(getStrata: () => Promise<Strata> | Strata) {
  return createTaskHandler(storeTasks, getStrata, hostTasks('store'));
}
