import type {
  BackupCounters,
  Job,
  JobAccepted,
  NewSnapshot,
  NewVolume,
  Page,
  Snapshot,
  SnapshotAccepted,
  SnapshotCopy,
  SnapshotCopySelector,
  SnapshotDeleted,
  SnapshotReverted,
} from '../api-types.js';
import {
  type CommandContext,
  type CommandSpec,
  ExitCode,
  optFlag,
  optString,
  parseFlag,
  requireString,
} from '../command.js';
import {
  bytesOrDash,
  exactBytes,
  formatBytes,
  orDash,
  relativeTime,
  renderDetails,
  renderTable,
  timestamp,
  withSection,
} from '../format.js';
import type { Query, StrataClient } from '../http-client.js';
import {
  busyGuard,
  conflictState,
  fetchList,
  finishAccepted,
  finishJob,
  oneOf,
  PAGE_OPTIONS,
  printList,
  printResult,
  resultAs,
  runningJobs,
  WAIT_OPTIONS,
  waitTimeout,
  withHint,
} from './shared.js';
import { finishVolume, parseVolumeSize, volumeSummary } from './volumes.js';

const parseFrom = oneOf<SnapshotCopySelector>(['primary', 'image', 'all']);

/** States in which a job holds the snapshot: a conflicting request can succeed once that job ends. */
const BUSY: ReadonlySet<string> = new Set(['Allocated', 'Creating', 'BackingUp', 'Destroying']);

// API fields whose flag differs from the global mapping.
const FIELD_FLAGS: Record<string, string> = {
  volumeId: '--volume',
  backup: '--backup',
  from: '--from',
  fromSnapshotId: 'the <id> argument',
  storeId: '--store',
  sizeBytes: '--size',
};

/**
 * The snapshot routes. StrataClient has no methods for them, so they go through its generic
 * request() (and requestJob() for the routes that answer with a bare job), which add the
 * idempotency key, the retry and the error envelope all the same.
 */
function snapshotApi(client: StrataClient) {
  const path = (id: string) => `/snapshots/${encodeURIComponent(id)}`;
  return {
    list: async (query: Query) => (await client.request<Page<Snapshot>>('GET', '/snapshots', { query })).body,
    get: async (id: string) => (await client.request<Snapshot>('GET', path(id))).body,
    take: async (volumeId: string, body: NewSnapshot) =>
      (
        await client.request<SnapshotAccepted>('POST', `/volumes/${encodeURIComponent(volumeId)}/snapshots`, {
          body,
        })
      ).body,
    backup: async (id: string) => (await client.request<SnapshotAccepted>('POST', `${path(id)}/backup`)).body,
    /** The job's result is a SnapshotReverted. */
    revert: (id: string): Promise<JobAccepted> => client.requestJob('POST', `${path(id)}/revert`),
    /** The job's result is a SnapshotDeleted. The query is sent only when --from is given. */
    delete: (id: string, from: SnapshotCopySelector | undefined): Promise<JobAccepted> =>
      client.requestJob('DELETE', path(id), from ? { query: { from } } : {}),
  };
}

function snapshotTable(snapshots: Snapshot[], now: Date): string {
  return renderTable(snapshots, [
    { header: 'ID', value: (s) => s.id },
    { header: 'NAME', value: (s) => s.name },
    { header: 'VOLUME', value: (s) => s.volumeId },
    { header: 'STATUS', value: (s) => s.status },
    { header: 'SIZE', value: (s) => bytesOrDash(s.sizeBytes), align: 'right' },
    { header: 'POLICY', value: (s) => orDash(s.policyId) },
    { header: 'CREATED', value: (s) => relativeTime(s.createdAt, now) },
  ]);
}

function copyTable(copies: SnapshotCopy[]): string {
  return renderTable(copies, [
    { header: 'STORE', value: (c) => c.storeId },
    { header: 'ROLE', value: (c) => orDash(c.storeRole) },
    { header: 'STATUS', value: (c) => c.status },
    { header: 'SIZE', value: (c) => bytesOrDash(c.sizeBytes), align: 'right' },
    { header: 'VIRTUAL SIZE', value: (c) => bytesOrDash(c.virtualSizeBytes), align: 'right' },
    { header: 'PATH', value: (c) => orDash(c.path) },
    { header: 'REASON', value: (c) => c.statusReason ?? '' },
  ]);
}

function snapshotDetails(snapshot: Snapshot, now: Date): string {
  const details = renderDetails([
    ['ID', snapshot.id],
    ['Name', snapshot.name],
    ['Volume', snapshot.volumeId],
    ['Status', snapshot.status],
    ['Reason', snapshot.statusReason],
    // Exact bytes too: a restore makes a volume at least this big.
    ['Size', snapshot.sizeBytes === undefined ? '-' : exactBytes(snapshot.sizeBytes)],
    ['Policy', snapshot.policyId],
    ['Slot', snapshot.slot],
    ['Version', snapshot.version === undefined ? undefined : String(snapshot.version)],
    ['Created', timestamp(snapshot.createdAt, now)],
    ['Updated', snapshot.updatedAt && timestamp(snapshot.updatedAt, now)],
  ]);
  return withSection(details, 'Copies', snapshot.copies, copyTable);
}

/** The backup counters of a job: its result, else what its last progress report said. */
function backupCounters(job: Job): BackupCounters {
  const source = { ...job.progressDetail, ...job.result };
  const counters: BackupCounters = {};
  for (const key of ['bytesRead', 'bytesUploaded', 'chunksReused', 'chunksUploaded'] as const) {
    const value = source[key];
    if (typeof value === 'number') counters[key] = value;
  }
  if (typeof source['incremental'] === 'boolean') counters.incremental = source['incremental'];
  return counters;
}

/** The counters as label/value lines, or undefined when the job reported none. */
function countersText(counters: BackupCounters): string | undefined {
  if (Object.keys(counters).length === 0) return undefined;
  const count = (n: number | undefined) => (n === undefined ? undefined : String(n));
  return renderDetails([
    ['Bytes read', counters.bytesRead === undefined ? undefined : formatBytes(counters.bytesRead)],
    [
      'Bytes uploaded',
      counters.bytesUploaded === undefined ? undefined : formatBytes(counters.bytesUploaded),
    ],
    ['Chunks reused', count(counters.chunksReused)],
    ['Chunks uploaded', count(counters.chunksUploaded)],
    ['Incremental', counters.incremental === undefined ? undefined : counters.incremental ? 'yes' : 'no'],
  ]);
}

/**
 * The tail of take and backup: as {@link finishAccepted}, and once the job has succeeded, the
 * sentence followed by the backup counters the job reported.
 */
async function finishSnapshot(
  ctx: CommandContext,
  timeoutMs: number,
  accepted: SnapshotAccepted,
  done: (snapshot: Snapshot) => string,
): Promise<number> {
  const what = {
    key: 'snapshot',
    noun: 'Snapshot',
    entity: accepted.snapshot,
    refetch: snapshotApi(ctx.client).get,
  };
  return finishAccepted(ctx, timeoutMs, accepted, what, (snapshot, job) => {
    const counters = countersText(backupCounters(job));
    return counters ? `${done(snapshot)}\n${counters}` : done(snapshot);
  });
}

/**
 * Runs a request against one snapshot, with a hint when the API refuses it because the snapshot (or
 * its volume) is busy.
 */
const onSnapshot = busyGuard('snapshot', BUSY);

const COPY_WORDS: Record<SnapshotCopySelector, string> = {
  primary: 'the primary copy of ',
  image: 'the backup of ',
  all: '',
};

export const snapshotCommands: CommandSpec[] = [
  {
    path: ['snapshots', 'list'],
    summary: 'List snapshots, of every volume or of one.',
    options: {
      volume: { type: 'string', valueName: '<volumeId>', description: 'only snapshots of this volume' },
      ...PAGE_OPTIONS,
    },
    fieldFlags: FIELD_FLAGS,
    examples: ['strata snapshots list --volume vol-1', 'strata snapshots list --all --json'],
    async run(ctx) {
      const command = 'snapshots list';
      const api = snapshotApi(ctx.client);
      const filters = { volumeId: optString(ctx.values, 'volume') };
      const page = await fetchList(ctx, command, filters, (q) => api.list(q));
      printList(ctx, page, 'snapshots', snapshotTable, (s) => s.id);
      return ExitCode.Ok;
    },
  },
  {
    path: ['snapshots', 'get'],
    summary: 'Show one snapshot and its copies (the layer on primary storage, the backup on an image store).',
    args: ['id'],
    fieldFlags: FIELD_FLAGS,
    async run(ctx) {
      const snapshot = await snapshotApi(ctx.client).get(ctx.args[0]!);
      printResult(ctx, snapshot, snapshot.id, () => snapshotDetails(snapshot, ctx.now));
      return ExitCode.Ok;
    },
  },
  {
    path: ['snapshots', 'take'],
    summary: 'Take a snapshot of a volume on its primary store (and back it up, with --backup).',
    args: ['volumeId'],
    usage: '<volumeId> --name <name> [--backup] [options]',
    options: {
      name: { type: 'string', valueName: '<name>', description: 'display name' },
      backup: { type: 'boolean', description: 'back it up to the image store as soon as it is taken' },
      ...WAIT_OPTIONS,
    },
    fieldFlags: FIELD_FLAGS,
    examples: [
      'strata snapshots take vol-1 --name before-upgrade',
      'strata snapshots take vol-1 --name nightly --backup',
    ],
    async run(ctx) {
      const command = 'snapshots take';
      const volumeId = ctx.args[0]!;
      const name = requireString(ctx.values, 'name', command);
      const backup = optFlag(ctx.values, 'backup');
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await withHint(
        () => snapshotApi(ctx.client).take(volumeId, { name, ...(backup ? { backup } : {}) }),
        (error) => {
          const state = conflictState(error);
          return state !== undefined && state !== 'Ready'
            ? `volume ${volumeId} is ${state}; snapshots are taken of Ready volumes (${runningJobs(volumeId)})`
            : undefined;
        },
      );
      let final: Snapshot | undefined;
      const code = await finishSnapshot(ctx, timeoutMs, accepted, (s) => {
        final = s;
        return `Took snapshot ${s.name} (${s.id}) of volume ${s.volumeId}, status ${s.status}.`;
      });
      // The backup may run on after the take's job; say where to watch it.
      if (final?.status === 'BackingUp') {
        ctx.out.note(`Its backup is still running; check with: strata snapshots get ${final.id}`);
      }
      return code;
    },
  },
  {
    path: ['snapshots', 'backup'],
    summary: 'Back a snapshot up to the image store (incremental from the previous backup when it can).',
    args: ['id'],
    options: { ...WAIT_OPTIONS },
    fieldFlags: FIELD_FLAGS,
    examples: ['strata snapshots backup snap-1', 'JOB=$(strata snapshots backup snap-1 --no-wait -q)'],
    async run(ctx) {
      const command = 'snapshots backup';
      const id = ctx.args[0]!;
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await onSnapshot(id, () => snapshotApi(ctx.client).backup(id));
      return finishSnapshot(
        ctx,
        timeoutMs,
        accepted,
        (s) => `Backed up snapshot ${s.name} (${s.id}) of volume ${s.volumeId}, status ${s.status}.`,
      );
    },
  },
  {
    path: ['snapshots', 'revert'],
    summary: 'Return a volume to one of its snapshots (any of them, not only the latest).',
    args: ['id'],
    options: { ...WAIT_OPTIONS },
    fieldFlags: FIELD_FLAGS,
    examples: ['strata snapshots revert snap-1'],
    async run(ctx) {
      const command = 'snapshots revert';
      const id = ctx.args[0]!;
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await withHint(
        () => snapshotApi(ctx.client).revert(id),
        // The conflict may be the snapshot's state or its volume's; both are one command away.
        (error) =>
          error.status === 409
            ? `a revert needs the snapshot on primary storage (CreatedOnPrimary or BackedUp) and its volume Ready; see: strata snapshots get ${id}`
            : undefined,
      );
      return finishJob(ctx, timeoutMs, accepted, {
        id,
        started: `Reverting to snapshot ${id}`,
        done: (job) => {
          const { volumeId } = resultAs<SnapshotReverted>(job);
          return volumeId ? `Reverted volume ${volumeId} to snapshot ${id}.` : `Reverted to snapshot ${id}.`;
        },
      });
    },
  },
  {
    path: ['snapshots', 'delete'],
    summary: 'Delete a snapshot, or only its primary copy or its backup (--from).',
    args: ['id'],
    usage: '<id> [--from primary|image|all] [options]',
    options: {
      from: {
        type: 'string',
        valueName: '<where>',
        description: 'primary (the layer), image (the backup) or all (default)',
      },
      ...WAIT_OPTIONS,
    },
    fieldFlags: FIELD_FLAGS,
    examples: ['strata snapshots delete snap-1', 'strata snapshots delete snap-1 --from primary'],
    async run(ctx) {
      const command = 'snapshots delete';
      const id = ctx.args[0]!;
      const from = parseFlag(ctx.values, 'from', command, parseFrom);
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await onSnapshot(id, () => snapshotApi(ctx.client).delete(id, from));
      const what = `${COPY_WORDS[from ?? 'all']}snapshot ${id}`;
      return finishJob(ctx, timeoutMs, accepted, {
        id,
        started: `Deleting ${what}`,
        done: (job) => {
          const removed = resultAs<SnapshotDeleted>(job).removed ?? [];
          if (removed.length === 0) return `Deleted ${what}; no store held a copy to remove.`;
          const stores = removed.length === 1 ? 'store' : 'stores';
          return `Deleted ${what} from ${stores} ${removed.join(', ')}.`;
        },
      });
    },
  },
  {
    path: ['snapshots', 'restore'],
    summary: 'Make a new volume from a snapshot (from primary storage, else from its backup).',
    args: ['id'],
    usage: '<id> --name <name> --zone <zoneId> [--store <storeId>] [--size <size>] [options]',
    options: {
      name: { type: 'string', valueName: '<name>', description: 'display name of the new volume' },
      zone: { type: 'string', valueName: '<zoneId>', description: 'zone of the new volume' },
      store: {
        type: 'string',
        valueName: '<storeId>',
        description: 'this primary store (default: chosen by the API)',
      },
      size: {
        type: 'string',
        valueName: '<size>',
        description: "size, e.g. 20GiB (default: the snapshot's size)",
      },
      ...WAIT_OPTIONS,
    },
    fieldFlags: FIELD_FLAGS,
    examples: [
      'strata snapshots restore snap-1 --name data-1-restored --zone zone-1',
      'strata snapshots restore snap-1 --name copy --zone zone-1 --store st-2 --no-wait',
    ],
    async run(ctx) {
      const command = 'snapshots restore';
      const { values } = ctx;
      const id = ctx.args[0]!;
      const storeId = optString(values, 'store');
      const sizeBytes = parseFlag(values, 'size', command, parseVolumeSize);
      const request: NewVolume = {
        name: requireString(values, 'name', command),
        zoneId: requireString(values, 'zone', command),
        fromSnapshotId: id,
        ...(storeId ? { storeId } : {}),
        ...(sizeBytes !== undefined ? { sizeBytes } : {}),
      };
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await onSnapshot(id, () => ctx.client.createVolume(request));
      return finishVolume(ctx, timeoutMs, accepted, (v) => `Restored snapshot ${id} to ${volumeSummary(v)}.`);
    },
  },
];
