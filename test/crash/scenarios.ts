/**
 * The crash matrix's scenarios: each flow, started the way an operator starts it, with what it
 * needs made first and the repeat an operator makes after a failure.
 */
import { FlowName } from '../../functions/core/ports';
import type { CrashStack } from './crash-stack';
import type { Scenario } from './matrix';

const MiB = 2 ** 20;

async function blankVolume(t: CrashStack, name: string, sizeBytes = 16 * MiB): Promise<string> {
  const { answer, job } = await t.run('POST', '/volumes', { name, zoneId: 'zone-1', sizeBytes });
  if (job?.state !== 'succeeded') throw new Error(`preparing volume ${name}: ${JSON.stringify(job ?? answer.body)}`);
  return String(answer.body.volume.id);
}

async function volume(t: CrashStack, id: string) {
  const { status, body } = await t.call('GET', `/volumes/${id}`);
  return status === 200 ? body : undefined;
}

export const scenarios: Scenario<Record<string, string>>[] = [
  {
    flow: FlowName.VolumeCreate,
    name: 'blank volume',
    prepare: async () => ({}),
    request: () => ({ method: 'POST', route: '/volumes', body: { name: 'crash', zoneId: 'zone-1', sizeBytes: 16 * MiB } }),
  },
  {
    flow: FlowName.VolumeResize,
    name: FlowName.VolumeResize,
    prepare: async (t) => ({ volumeId: await blankVolume(t, 'to-resize') }),
    request: (p) => ({ method: 'POST', route: `/volumes/${p.volumeId}/resize`, body: { sizeBytes: 32 * MiB } }),
    retry: async (t, p) => {
      const v = await volume(t, p.volumeId!);
      return v?.status === 'Ready' && v.sizeBytes === 32 * MiB
        ? undefined
        : { method: 'POST', route: `/volumes/${p.volumeId}/resize`, body: { sizeBytes: 32 * MiB } };
    },
  },
  {
    flow: FlowName.VolumeDelete,
    name: FlowName.VolumeDelete,
    prepare: async (t) => ({ volumeId: await blankVolume(t, 'to-delete') }),
    request: (p) => ({ method: 'DELETE', route: `/volumes/${p.volumeId}` }),
    retry: async (t, p) => {
      const v = await volume(t, p.volumeId!);
      return !v || v.status === 'Destroyed' ? undefined : { method: 'DELETE', route: `/volumes/${p.volumeId}` };
    },
  },
];
