/**
 * Each flow's definition and how placeholders are filled in. Most flows are ASL files
 * (statemachines/<flow>.asl.json); the one-step flows are described in TypeScript (single-step.ts)
 * and their ASL generated. The CDK stack hands the text to Step Functions with
 * `definitionSubstitutions`; the embedded stack runs the definition it reads back from the
 * synthesized template.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { FlowName } from '../functions/core/ports.js';
import { type SingleStepFlow, singleStepDefinition } from './single-step.js';

/** Placeholders used in the definitions, as `${Name}`. */
export const FlowSubstitution = {
  StoreTasksFunctionArn: 'StoreTasksFunctionArn',
  ImageTasksFunctionArn: 'ImageTasksFunctionArn',
} as const;
export type FlowSubstitution = (typeof FlowSubstitution)[keyof typeof FlowSubstitution];

/** The flows defined in TypeScript: one host-touching step and its compensation each. */
const singleStepFlows: Partial<Record<FlowName, SingleStepFlow>> = {
  [FlowName.SnapshotRevert]: {
    comment:
      'snapshot-revert: the volume is held in RevertSnapshotting. A host makes the snapshot the base of a new ' +
      'empty active layer (the driver swaps layers atomically) and the volume is Ready again; on failure the ' +
      'volume keeps its layers, is released and the job says why.',
    functionPlaceholder: FlowSubstitution.StoreTasksFunctionArn,
    inputFields: ['jobId', 'snapshotId'],
    step: { state: 'Revert', task: 'revertOnPool', comment: 'revertSnapshot on a host', timeoutSeconds: 900 },
    compensate: { task: 'failRevert' },
    fail: { error: 'SnapshotRevertFailed', cause: 'The volume was not reverted; the job says why.' },
  },
  [FlowName.SnapshotDelete]: {
    comment:
      'snapshot-delete: the snapshot is held in Destroying (and, when a layer is merged, the volume too). Each ' +
      'targeted copy goes: a primary layer is merged into what depends on it on a host, a backup releases its ' +
      'chunks (collected when no other backup holds them). On failure the snapshot is Error with the reason ' +
      'and the delete can be retried.',
    functionPlaceholder: FlowSubstitution.StoreTasksFunctionArn,
    inputFields: ['jobId', 'snapshotId', 'from'],
    step: {
      state: 'Delete',
      task: 'deleteSnapshot',
      comment: 'remove the targeted copies',
      timeoutSeconds: 900,
    },
    compensate: { task: 'failSnapshotDelete' },
    fail: { error: 'SnapshotDeleteFailed', cause: 'The snapshot was not deleted; the job says why.' },
  },
  [FlowName.StoreInventory]: {
    comment:
      'store-inventory: lists what the storage holds (through a host for host-mounted stores) and matches each ' +
      'object with the row that owns it; the job result holds the list.',
    functionPlaceholder: FlowSubstitution.StoreTasksFunctionArn,
    inputFields: ['jobId', 'storeId'],
    step: { state: 'List', task: 'inventoryStore', comment: 'listObjects', timeoutSeconds: 600 },
    compensate: { task: 'failInventory' },
    fail: { error: 'StoreInventoryFailed', cause: 'The store could not be listed; the job says why.' },
  },
  [FlowName.VolumeAccess]: {
    comment:
      'volume-access: grants a host access to a volume (the driver opens the object to that host and says how ' +
      'it reaches it; the job result holds the URI) or revokes it.',
    functionPlaceholder: FlowSubstitution.StoreTasksFunctionArn,
    inputFields: ['jobId', 'volumeId', 'hostId', 'action'],
    step: {
      state: 'Access',
      task: 'volumeAccess',
      comment: 'grantAccess or revokeAccess',
      timeoutSeconds: 300,
    },
    compensate: { task: 'failVolumeAccess' },
    fail: { error: 'VolumeAccessFailed', cause: 'Access was not changed; the job says why.' },
  },
  [FlowName.HostProbe]: {
    comment:
      "host-probe: asks a host's runtime for its build and prerequisites (Node.js, qemu-img, qemu-nbd) and " +
      'records them on the host.',
    functionPlaceholder: FlowSubstitution.StoreTasksFunctionArn,
    inputFields: ['jobId', 'hostId'],
    step: { state: 'Probe', task: 'probeHost', comment: 'the probe host operation', timeoutSeconds: 300 },
    compensate: { task: 'failProbe' },
    fail: { error: 'HostProbeFailed', cause: 'The host did not answer the probe; the job says why.' },
  },
};

export function flowDefinitionPath(flow: FlowName): string {
  return path.join(__dirname, `${flow}.asl.json`);
}

/** A flow's definition text with its `${Name}` placeholders. */
export function flowDefinitionText(flow: FlowName): string {
  const single = singleStepFlows[flow];
  if (single) return JSON.stringify(singleStepDefinition(single), null, 2);
  return readFileSync(flowDefinitionPath(flow), 'utf8');
}

/** Replaces every `${Name}` in `text` with `substitutions[Name]`; an unknown name throws. */
export function substitute(text: string, substitutions: Record<string, string>, where: string): string {
  return text.replace(/\$\{([A-Za-z0-9]+)\}/g, (_, name: string) => {
    const value = substitutions[name];
    if (value === undefined) throw new Error(`${where}: no substitution for \${${name}}`);
    return value;
  });
}

/** A flow's definition with every placeholder replaced. */
export function loadFlowDefinition(
  flow: FlowName,
  substitutions: Record<FlowSubstitution, string>,
): Record<string, unknown> {
  return JSON.parse(substitute(flowDefinitionText(flow), substitutions, `flow ${flow}`)) as Record<
    string,
    unknown
  >;
}

/** The placeholders a flow uses, e.g. to grant its state machine only the functions it calls. */
export function flowSubstitutionsUsed(flow: FlowName): FlowSubstitution[] {
  const names = new Set([...flowDefinitionText(flow).matchAll(/\$\{([A-Za-z0-9]+)\}/g)].map((m) => m[1]));
  return (Object.values(FlowSubstitution) as FlowSubstitution[]).filter((n) => names.has(n));
}
