import type {
  NewVolume,
  PlacementCandidate,
  PlacementExplanation,
  Volume,
  VolumeAccepted,
  VolumeAccessGranted,
  VolumeStatus,
} from '../api-types.js';
import {
  type CommandContext,
  type CommandSpec,
  ExitCode,
  optFlag,
  optList,
  optString,
  parseFlag,
  requireFlag,
  requireString,
  UsageError,
} from '../command.js';
import {
  exactBytes,
  formatBytes,
  orDash,
  parseSize,
  renderDetails,
  renderTable,
  timestamp,
} from '../format.js';
import {
  busyGuard,
  fetchList,
  finishAccepted,
  finishJob,
  followForResult,
  oneOf,
  PAGE_OPTIONS,
  printList,
  printResult,
  WAIT_OPTIONS,
  waitTimeout,
  withHint,
} from './shared.js';

const STATUSES: readonly VolumeStatus[] = [
  'Allocated',
  'Creating',
  'Ready',
  'Resizing',
  'Snapshotting',
  'RevertSnapshotting',
  'Migrating',
  'Destroying',
  'Destroyed',
  'Error',
];
const parseVolumeStatus = oneOf<VolumeStatus>(STATUSES);

/** States in which a job holds the volume: a conflicting request can succeed once that job ends. */
const BUSY: ReadonlySet<string> = new Set([
  'Creating',
  'Resizing',
  'Snapshotting',
  'RevertSnapshotting',
  'Migrating',
  'Destroying',
]);

// API fields whose flag differs from the global mapping (there `sizeBytes` is the upload's <file>).
const FIELD_FLAGS: Record<string, string> = {
  sizeBytes: '--size',
  allowShrink: '--allow-shrink',
  templateId: '--template',
  mode: '--full-copy',
  storeId: '--store',
  hostId: '--host',
};

/** A disk of zero bytes is refused here rather than by the API, with the flag named. */
export function parseVolumeSize(text: string): number {
  const bytes = parseSize(text);
  if (bytes <= 0) throw new Error(`'${text}' is not a positive size`);
  return bytes;
}

/** Repeated and comma-separated tags, trimmed and de-duplicated in order (as `stores add`). */
function collectTags(values: CommandContext['values']): string[] {
  const tags = optList(values, 'tag')
    .flatMap((tag) => tag.split(','))
    .map((tag) => tag.trim())
    .filter(Boolean);
  return [...new Set(tags)];
}

function volumeTable(volumes: Volume[]): string {
  return renderTable(volumes, [
    { header: 'ID', value: (v) => v.id },
    { header: 'NAME', value: (v) => v.name },
    { header: 'ZONE', value: (v) => v.zoneId },
    { header: 'STORE', value: (v) => orDash(v.storeId) },
    { header: 'SIZE', value: (v) => formatBytes(v.sizeBytes), align: 'right' },
    { header: 'STATUS', value: (v) => v.status },
    { header: 'TEMPLATE', value: (v) => orDash(v.templateId) },
  ]);
}

function volumeDetails(volume: Volume, now: Date): string {
  const hosts = volume.accessHostIds ?? [];
  return renderDetails([
    ['ID', volume.id],
    ['Name', volume.name],
    ['Zone', volume.zoneId],
    ['Store', orDash(volume.storeId)],
    ['Template', orDash(volume.templateId)],
    // Exact bytes too: resize targets and template minimums are compared to the byte.
    ['Size', exactBytes(volume.sizeBytes)],
    ['Format', volume.format],
    ['Path', orDash(volume.path)],
    ['Tags', volume.tags?.length ? volume.tags.join(', ') : '-'],
    ['Status', volume.status],
    ['Reason', volume.statusReason],
    ['Access', hosts.length ? hosts.join(', ') : '-'],
    ['Version', String(volume.version)],
    ['Created', timestamp(volume.createdAt, now)],
    ['Updated', timestamp(volume.updatedAt, now)],
  ]);
}

function verdict(candidate: PlacementCandidate, chosen: PlacementCandidate | undefined): string {
  if (chosen && candidate.storeId === chosen.storeId) return 'chosen';
  // Eligible but ranked below the chosen store: calling it rejected would send people hunting for a
  // problem that is not there.
  return candidate.accepted ? 'accepted' : 'rejected';
}

function placementTable(explanation: PlacementExplanation): string {
  const { chosen, candidates } = explanation.placement;
  // The chosen store may be missing from the list in a terse answer; show it all the same.
  const rows =
    chosen && !candidates.some((c) => c.storeId === chosen.storeId) ? [chosen, ...candidates] : candidates;
  return renderTable(rows, [
    { header: 'STORE', value: (c) => c.storeId },
    { header: 'NAME', value: (c) => c.name },
    { header: 'VERDICT', value: (c) => verdict(c, chosen) },
    { header: 'REASON', value: (c) => c.reason },
  ]);
}

/**
 * A dry run exits 0 when the volume would be placed and 1 when no store would take it, so that a
 * script can ask "would this work?" without reading the table.
 */
function printPlacement(ctx: CommandContext, explanation: PlacementExplanation): number {
  const { out } = ctx;
  const { chosen, candidates } = explanation.placement;
  if (out.json) out.data(explanation);
  else if (out.quiet) {
    if (chosen) out.print(chosen.storeId);
  } else if (candidates.length === 0 && !chosen) out.note('No stores were considered.');
  else out.print(placementTable(explanation));
  if (chosen) {
    const free = chosen.freeBytesAfter === undefined ? '' : `, leaving ${formatBytes(chosen.freeBytesAfter)}`;
    out.note(
      `Dry run: the volume would go to store ${chosen.name} (${chosen.storeId})${free}. Nothing was created.`,
    );
    return ExitCode.Ok;
  }
  out.error('Error: no store can take this volume (dry run: nothing was created).');
  return ExitCode.Failure;
}

/**
 * The shared tail of every asynchronous command that answers with a volume (the volume commands,
 * and a restore from a snapshot): print the job at once with --no-wait, otherwise follow it and
 * show the volume as it ended up.
 */
export async function finishVolume(
  ctx: CommandContext,
  timeoutMs: number,
  accepted: VolumeAccepted,
  done: (volume: Volume) => string,
): Promise<number> {
  const what = {
    key: 'volume',
    noun: 'Volume',
    entity: accepted.volume,
    refetch: (id: string) => ctx.client.getVolume(id),
  };
  return finishAccepted(ctx, timeoutMs, accepted, what, done);
}

/** Runs a request against one volume, with a hint when the API refuses it because the volume is busy. */
const onVolume = busyGuard('volume', BUSY);

function where(volume: Volume): string {
  return volume.storeId ? ` on store ${volume.storeId}` : '';
}

/** A new volume in a sentence: `volume data-1 (vol-1), 10.0 GiB on store st-1, status Ready`. */
export function volumeSummary(volume: Volume): string {
  return `volume ${volume.name} (${volume.id}), ${formatBytes(volume.sizeBytes)}${where(volume)}, status ${volume.status}`;
}

export const volumeCommands: CommandSpec[] = [
  {
    path: ['volumes', 'list'],
    summary: 'List volumes.',
    options: {
      zone: { type: 'string', valueName: '<zoneId>', description: 'only volumes in this zone' },
      store: { type: 'string', valueName: '<storeId>', description: 'only volumes on this primary store' },
      status: {
        type: 'string',
        valueName: '<status>',
        description: 'e.g. Ready, Creating, Migrating, Error',
      },
      template: {
        type: 'string',
        valueName: '<templateId>',
        description: 'only volumes made from this template',
      },
      ...PAGE_OPTIONS,
    },
    fieldFlags: FIELD_FLAGS,
    examples: ['strata volumes list --zone zone-1', 'strata volumes list --status Error -q'],
    async run(ctx) {
      const command = 'volumes list';
      const filters = {
        zoneId: optString(ctx.values, 'zone'),
        storeId: optString(ctx.values, 'store'),
        status: parseFlag(ctx.values, 'status', command, parseVolumeStatus),
        templateId: optString(ctx.values, 'template'),
      };
      const page = await fetchList(ctx, command, filters, (q) => ctx.client.listVolumes(q));
      printList(ctx, page, 'volumes', volumeTable, (v) => v.id);
      return ExitCode.Ok;
    },
  },
  {
    path: ['volumes', 'get'],
    summary: 'Show one volume: placement, size, status and the hosts that can reach it.',
    args: ['id'],
    fieldFlags: FIELD_FLAGS,
    async run(ctx) {
      const volume = await ctx.client.getVolume(ctx.args[0]!);
      printResult(ctx, volume, volume.id, volumeDetails(volume, ctx.now));
      return ExitCode.Ok;
    },
  },
  {
    path: ['volumes', 'create'],
    summary: 'Create a volume, blank or from a template, and wait until it is Ready.',
    usage:
      '--name <name> --zone <zoneId> (--size <size> | --template <templateId> [--size <size>]) [options]',
    options: {
      name: { type: 'string', valueName: '<name>', description: 'display name' },
      zone: { type: 'string', valueName: '<zoneId>', description: 'zone of the volume' },
      size: {
        type: 'string',
        valueName: '<size>',
        description: "size, e.g. 10GiB, 512M (default with --template: the template's virtual size)",
      },
      template: {
        type: 'string',
        valueName: '<templateId>',
        description: 'make the volume from this template',
      },
      store: {
        type: 'string',
        valueName: '<storeId>',
        description: 'this primary store (default: chosen by the API)',
      },
      cluster: { type: 'string', valueName: '<clusterId>', description: 'a store this cluster can reach' },
      tag: {
        type: 'string',
        multiple: true,
        valueName: '<tag>',
        description: 'storage tag the store must carry (repeat, or comma-separate)',
      },
      'full-copy': {
        type: 'boolean',
        description: 'copy the whole template instead of a linked clone on its cached copy',
      },
      'dry-run': {
        type: 'boolean',
        description: 'show which store would take it and why the others would not; create nothing',
      },
      ...WAIT_OPTIONS,
    },
    fieldFlags: FIELD_FLAGS,
    examples: [
      'strata volumes create --name data-1 --zone zone-1 --size 10GiB',
      'strata volumes create --name web-1 --zone zone-1 --template tpl-4c1 --size 20G --tag ssd',
      'strata volumes create --name web-2 --zone zone-1 --template tpl-4c1 --dry-run',
    ],
    async run(ctx) {
      const command = 'volumes create';
      const { values } = ctx;
      const templateId = optString(values, 'template');
      const sizeBytes = parseFlag(values, 'size', command, parseVolumeSize);
      if (sizeBytes === undefined && !templateId) {
        throw new UsageError(
          'give --size for a blank volume, or --template (and optionally --size)',
          command,
        );
      }
      const fullCopy = optFlag(values, 'full-copy');
      if (fullCopy && !templateId) throw new UsageError('--full-copy applies only with --template', command);
      const dryRun = optFlag(values, 'dry-run');
      const storeId = optString(values, 'store');
      const clusterId = optString(values, 'cluster');
      const tags = collectTags(values);
      const request: NewVolume = {
        name: requireString(values, 'name', command),
        zoneId: requireString(values, 'zone', command),
        ...(sizeBytes !== undefined ? { sizeBytes } : {}),
        ...(templateId ? { templateId } : {}),
        ...(storeId ? { storeId } : {}),
        ...(clusterId ? { clusterId } : {}),
        ...(tags.length ? { tags } : {}),
        // Linked is the API's default; only the exception is sent.
        ...(fullCopy ? { mode: 'full' as const } : {}),
      };
      if (dryRun) {
        // The API tells requests apart by method, path and body, not by query: under the same
        // --idempotency-key the real create would get the dry run's answer replayed. Its own key avoids that.
        const base = optString(values, 'idempotency-key');
        const options = base ? { idempotencyKey: `${base}.dry-run` } : {};
        return printPlacement(ctx, await ctx.client.explainVolumePlacement(request, options));
      }
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await ctx.client.createVolume(request);
      return finishVolume(ctx, timeoutMs, accepted, (v) => `Created ${volumeSummary(v)}.`);
    },
  },
  {
    path: ['volumes', 'resize'],
    summary: 'Grow a volume (or shrink it, with --allow-shrink).',
    args: ['id'],
    usage: '<id> --size <size> [--allow-shrink] [options]',
    options: {
      size: { type: 'string', valueName: '<size>', description: 'the new size, e.g. 20GiB' },
      'allow-shrink': {
        type: 'boolean',
        description: 'allow a size below the current one (the data past the new end is lost)',
      },
      ...WAIT_OPTIONS,
    },
    fieldFlags: FIELD_FLAGS,
    examples: ['strata volumes resize vol-1 --size 20GiB'],
    async run(ctx) {
      const command = 'volumes resize';
      const id = ctx.args[0]!;
      const sizeBytes = requireFlag(ctx.values, 'size', command, parseVolumeSize);
      const allowShrink = optFlag(ctx.values, 'allow-shrink');
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await withHint(
        () =>
          onVolume(id, () =>
            ctx.client.resizeVolume(id, { sizeBytes, ...(allowShrink ? { allowShrink } : {}) }),
          ),
        // The API refuses a shrink unless told; the flag that tells it is ours to name.
        (error) =>
          error.field === 'sizeBytes' && /shrink/i.test(error.message)
            ? 'add --allow-shrink to shrink it anyway (the data past the new end is lost)'
            : undefined,
      );
      return finishVolume(
        ctx,
        timeoutMs,
        accepted,
        (v) => `Volume ${v.name} (${v.id}) is now ${formatBytes(v.sizeBytes)}, status ${v.status}.`,
      );
    },
  },
  {
    path: ['volumes', 'migrate'],
    summary: 'Move a volume to another primary store.',
    args: ['id'],
    usage: '<id> --store <storeId> [options]',
    options: {
      store: { type: 'string', valueName: '<storeId>', description: 'the primary store to move it to' },
      ...WAIT_OPTIONS,
    },
    fieldFlags: FIELD_FLAGS,
    examples: ['strata volumes migrate vol-1 --store st-2'],
    async run(ctx) {
      const command = 'volumes migrate';
      const id = ctx.args[0]!;
      const storeId = requireString(ctx.values, 'store', command);
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await onVolume(id, () => ctx.client.migrateVolume(id, storeId));
      return finishVolume(
        ctx,
        timeoutMs,
        accepted,
        (v) => `Volume ${v.name} (${v.id}) is${where(v)}, status ${v.status}.`,
      );
    },
  },
  {
    path: ['volumes', 'delete'],
    summary: 'Delete a volume and free its space (refused while a host has access).',
    args: ['id'],
    options: { ...WAIT_OPTIONS },
    fieldFlags: FIELD_FLAGS,
    async run(ctx) {
      const command = 'volumes delete';
      const id = ctx.args[0]!;
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await withHint(
        () => onVolume(id, () => ctx.client.deleteVolume(id)),
        (error) =>
          error.status === 409 && /access/i.test(error.message)
            ? `revoke each host's access first: strata volumes access revoke ${id} --host <hostId>`
            : undefined,
      );
      return finishJob(ctx, timeoutMs, accepted, {
        id,
        started: `Deleting volume ${id}`,
        done: () => `Deleted volume ${id}.`,
      });
    },
  },
  {
    path: ['volumes', 'access', 'grant'],
    summary: 'Let a host reach a volume; prints how (the URI the host uses).',
    args: ['id'],
    usage: '<id> --host <hostId> [options]',
    options: {
      host: { type: 'string', valueName: '<hostId>', description: 'the host to grant access' },
      ...WAIT_OPTIONS,
    },
    fieldFlags: FIELD_FLAGS,
    examples: [
      'strata volumes access grant vol-1 --host h-1',
      'URI=$(strata volumes access grant vol-1 --host h-1 -q)',
    ],
    async run(ctx) {
      const command = 'volumes access grant';
      const id = ctx.args[0]!;
      const hostId = requireString(ctx.values, 'host', command);
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await onVolume(id, () => ctx.client.grantVolumeAccess(id, hostId));
      const { exitCode, result } = await followForResult<VolumeAccessGranted>(
        ctx,
        timeoutMs,
        accepted,
        `Granting host ${hostId} access to volume ${id}`,
      );
      if (!result) return exitCode;
      const uri = result.uri ?? '';
      const until = result.expiresAt ? ` (until ${result.expiresAt})` : '';
      // -q prints the URI: it is what a script passes on to the host. --json the job's result, which
      // holds the same uri, hostId and expiresAt that the synchronous answer used to.
      printResult(
        ctx,
        result,
        uri,
        `Host ${result.hostId ?? hostId} can reach volume ${id} at ${uri}${until}.`,
      );
      return exitCode;
    },
  },
  {
    path: ['volumes', 'access', 'revoke'],
    summary: "Withdraw a host's access to a volume.",
    args: ['id'],
    usage: '<id> --host <hostId> [options]',
    options: {
      host: { type: 'string', valueName: '<hostId>', description: 'the host whose access ends' },
      ...WAIT_OPTIONS,
    },
    fieldFlags: FIELD_FLAGS,
    examples: ['strata volumes access revoke vol-1 --host h-1'],
    async run(ctx) {
      const command = 'volumes access revoke';
      const id = ctx.args[0]!;
      const hostId = requireString(ctx.values, 'host', command);
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await onVolume(id, () => ctx.client.revokeVolumeAccess(id, hostId));
      return finishJob(ctx, timeoutMs, accepted, {
        id,
        started: `Revoking access of host ${hostId} to volume ${id}`,
        done: () => `Revoked access of host ${hostId} to volume ${id}.`,
      });
    },
  },
];
