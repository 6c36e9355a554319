/** Every flow, by name: each one's module is its single source of truth. */
import { FlowName } from '../../functions/core/ports.js';
import type { FlowDefinition } from '../flow.js';
import { backupVerify } from './backup-verify.js';
import { hostProbe } from './host-probe.js';
import { orphanSweep } from './orphan-sweep.js';
import { snapshotBackup } from './snapshot-backup.js';
import { snapshotDelete } from './snapshot-delete.js';
import { snapshotPolicy } from './snapshot-policy.js';
import { snapshotRevert } from './snapshot-revert.js';
import { snapshotTake } from './snapshot-take.js';
import { storeAttach } from './store-attach.js';
import { storeInventory } from './store-inventory.js';
import { storeMaintenance } from './store-maintenance.js';
import { templateCopy } from './template-copy.js';
import { templateIngest } from './template-ingest.js';
import { volumeAccess } from './volume-access.js';
import { volumeCreate } from './volume-create.js';
import { volumeDelete } from './volume-delete.js';
import { volumeMigrate } from './volume-migrate.js';
import { volumeResize } from './volume-resize.js';

export const flows: Record<FlowName, FlowDefinition> = {
  [FlowName.StoreAttach]: storeAttach,
  [FlowName.StoreMaintenance]: storeMaintenance,
  [FlowName.TemplateIngest]: templateIngest,
  [FlowName.TemplateCopy]: templateCopy,
  [FlowName.VolumeCreate]: volumeCreate,
  [FlowName.VolumeDelete]: volumeDelete,
  [FlowName.VolumeResize]: volumeResize,
  [FlowName.VolumeMigrate]: volumeMigrate,
  [FlowName.SnapshotTake]: snapshotTake,
  [FlowName.SnapshotBackup]: snapshotBackup,
  [FlowName.SnapshotPolicy]: snapshotPolicy,
  [FlowName.SnapshotRevert]: snapshotRevert,
  [FlowName.SnapshotDelete]: snapshotDelete,
  [FlowName.StoreInventory]: storeInventory,
  [FlowName.HostProbe]: hostProbe,
  [FlowName.VolumeAccess]: volumeAccess,
  [FlowName.OrphanSweep]: orphanSweep,
  [FlowName.BackupVerify]: backupVerify,
};
