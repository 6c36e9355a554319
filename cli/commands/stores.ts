import type {
  Accepted,
  NewStore,
  ScopeType,
  Store,
  StoreInventory,
  StoreObject,
  StorePatch,
  StoreRole,
} from '../api-types.js';
import {
  type CommandContext,
  type CommandSpec,
  ExitCode,
  type OptionSpec,
  optFlag,
  optList,
  optString,
  parseFlag,
  requireFlag,
  requireString,
  UsageError,
} from '../command.js';
import {
  formatBytes,
  formatDetails,
  parseSize,
  percent,
  relativeTime,
  renderDetails,
  renderTable,
  timestamp,
} from '../format.js';
import {
  fetchList,
  finishAccepted,
  followForResult,
  oneOf,
  PAGE_OPTIONS,
  printList,
  printResult,
  WAIT_OPTIONS,
  waitTimeout,
  withHint,
} from './shared.js';

const parseRole = oneOf<StoreRole>(['primary', 'image']);
const parseScope = oneOf<ScopeType>(['zone', 'cluster', 'host']);
const parseStoreStatus = oneOf([
  'Initializing',
  'Up',
  'Disabled',
  'PrepareForMaintenance',
  'Maintenance',
  'CancelMaintenance',
  'ErrorInMaintenance',
  'Deleting',
  'Error',
]);

function parseOverprovisioning(text: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0)
    throw new Error(`'${text}' is not a positive number (1 = no overcommit)`);
  return n;
}

/** 0.9 or 90% → 0.9. A bare 90 is refused rather than guessed at. */
function parseThreshold(text: string): number {
  const isPercent = text.trim().endsWith('%');
  const n = Number(isPercent ? text.trim().slice(0, -1) : text);
  const value = isPercent ? n / 100 : n;
  if (!Number.isFinite(value) || value <= 0 || value > 1) {
    throw new Error(`'${text}' is not a fraction in (0, 1] such as 0.9, or a percentage such as 90%`);
  }
  return value;
}

/** Repeated and comma-separated tags, trimmed and de-duplicated in order. */
function collectTags(values: CommandContext['values']): string[] {
  const tags = optList(values, 'tag')
    .flatMap((tag) => tag.split(','))
    .map((tag) => tag.trim())
    .filter(Boolean);
  return [...new Set(tags)];
}

function collectDetails(values: CommandContext['values'], command: string): Record<string, string> {
  const details: Record<string, string> = {};
  for (const pair of optList(values, 'detail')) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError(`--detail expects key=value, got '${pair}'`, command);
    const key = pair.slice(0, eq).trim();
    if (key in details) throw new UsageError(`--detail ${key} is given twice`, command);
    details[key] = pair.slice(eq + 1);
  }
  return details;
}

function scopeText(scope: Store['scope']): string {
  if (!scope) return '-';
  const where = [scope.zoneId, scope.clusterId, scope.hostId].filter(Boolean).join('/');
  return `${scope.type} ${where}`;
}

function storeTable(stores: Store[]): string {
  return renderTable(stores, [
    { header: 'ID', value: (s) => s.id },
    { header: 'NAME', value: (s) => s.name },
    { header: 'PROVIDER', value: (s) => s.provider },
    { header: 'ROLE', value: (s) => s.role },
    { header: 'SCOPE', value: (s) => scopeText(s.scope) },
    { header: 'STATUS', value: (s) => s.status },
    { header: 'CAPACITY', value: (s) => formatBytes(s.capacityBytes), align: 'right' },
    {
      header: 'ALLOCATED',
      value: (s) => `${formatBytes(s.allocatedBytes)} ${percent(s.allocatedBytes, s.capacityBytes)}`,
      align: 'right',
    },
    { header: 'USED', value: (s) => formatBytes(s.usedBytes), align: 'right' },
    { header: 'TAGS', value: (s) => (s.tags?.length ? s.tags.join(',') : '-') },
  ]);
}

function storeDetails(store: Store, now: Date): string {
  const limit = store.capacityBytes * (store.overprovisioning || 1);
  return renderDetails([
    ['ID', store.id],
    ['Name', store.name],
    ['Provider', store.provider],
    ['Role', store.role],
    ['Scope', scopeText(store.scope)],
    ['Status', store.status],
    ['Reason', store.statusReason],
    ['Capacity', formatBytes(store.capacityBytes)],
    ['Overprovisioning', `×${store.overprovisioning} (allocation limit ${formatBytes(limit)})`],
    ['Allocated', `${formatBytes(store.allocatedBytes)} (${percent(store.allocatedBytes, limit)} of limit)`],
    ['Used', `${formatBytes(store.usedBytes)} (${percent(store.usedBytes, store.capacityBytes)})`],
    ['Disable at', `${Math.round(store.disableThreshold * 100)}% of limit`],
    ['Tags', store.tags?.length ? store.tags.join(', ') : '-'],
    ['Details', formatDetails(store.details ?? {})],
    ['Version', String(store.version)],
    ['Created', timestamp(store.createdAt, now)],
    ['Updated', timestamp(store.updatedAt, now)],
  ]);
}

/** How many objects an inventory job lists at most; past that its result says `truncated`. */
const INVENTORY_LIMIT = 1000;

function objectTable(objects: StoreObject[], now: Date): string {
  return renderTable(objects, [
    { header: 'PATH', value: (o) => o.path },
    { header: 'SIZE', value: (o) => formatBytes(o.sizeBytes), align: 'right' },
    { header: 'MODIFIED', value: (o) => relativeTime(o.modifiedAt, now) },
    { header: 'OWNER', value: (o) => (o.owner ? `${o.owner.type} ${o.owner.id}` : '-') },
  ]);
}

/**
 * Prints an inventory: the job's result as JSON, the paths with --quiet, else the table, and when the
 * API stopped at its limit, how much of the store the table shows.
 */
function printInventory(ctx: CommandContext, inventory: Partial<StoreInventory>): void {
  const { out } = ctx;
  const objects = inventory.objects ?? [];
  if (out.json) out.data(inventory);
  else if (out.quiet) for (const object of objects) out.print(object.path);
  else if (objects.length === 0) out.note('No objects found.');
  else out.print(objectTable(objects, ctx.now));
  // On stdout with the table: a listing cut short must not read as the whole store when saved to a file.
  if (inventory.truncated && !out.json && !out.quiet) {
    out.print(`${objects.length} of ${inventory.total ?? '?'} objects (truncated)`);
  }
}

/**
 * The shared tail of every asynchronous store command: print the job at once with --no-wait,
 * otherwise follow it and show the store as it ended up.
 */
async function finishAsync(
  ctx: CommandContext,
  timeoutMs: number,
  accepted: Accepted<Store>,
  done: (store: Store) => string,
): Promise<number> {
  const what = {
    key: 'store',
    noun: 'Store',
    entity: accepted.store,
    refetch: (id: string) => ctx.client.getStore(id),
  };
  return finishAccepted(ctx, timeoutMs, accepted, what, done);
}

const TUNING_OPTIONS: Record<string, OptionSpec> = {
  capacity: {
    type: 'string',
    valueName: '<size>',
    description: 'capacity, e.g. 500GiB, 2T, 10G (binary), 100GB',
  },
  overprovisioning: {
    type: 'string',
    valueName: '<factor>',
    description: 'allocation limit = capacity × factor (primary stores)',
  },
  threshold: {
    type: 'string',
    valueName: '<fraction>',
    description: 'stop placing new objects past this share of the limit: 0.9 or 90%',
  },
  tag: {
    type: 'string',
    multiple: true,
    valueName: '<tag>',
    description: 'storage tag (repeat, or comma-separate)',
  },
};

function tuning(ctx: CommandContext, command: string) {
  return {
    capacityBytes: parseFlag(ctx.values, 'capacity', command, parseSize),
    overprovisioning: parseFlag(ctx.values, 'overprovisioning', command, parseOverprovisioning),
    disableThreshold: parseFlag(ctx.values, 'threshold', command, parseThreshold),
  };
}

function withoutUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

function statusCommand(verb: 'enable' | 'disable'): CommandSpec {
  const status = verb === 'enable' ? 'Up' : 'Disabled';
  return {
    path: ['stores', verb],
    summary:
      verb === 'enable'
        ? 'Let the allocator place new objects on a store again (status Up).'
        : 'Keep the allocator from placing new objects on a store (status Disabled).',
    args: ['id'],
    async run(ctx) {
      const store = await ctx.client.updateStore(ctx.args[0]!, { status });
      printResult(ctx, store, store.id, `Store ${store.name} (${store.id}) is now ${store.status}.`);
      return ExitCode.Ok;
    },
  };
}

export const storeCommands: CommandSpec[] = [
  {
    path: ['stores', 'list'],
    summary: 'List data stores (primary storage and image stores).',
    options: {
      zone: { type: 'string', valueName: '<zoneId>', description: 'only stores in this zone' },
      role: { type: 'string', valueName: '<role>', description: 'primary or image' },
      status: { type: 'string', valueName: '<status>', description: 'e.g. Up, Disabled, Maintenance, Error' },
      provider: { type: 'string', valueName: '<provider>', description: 'e.g. nfs, s3' },
      ...PAGE_OPTIONS,
    },
    examples: ['strata stores list --role primary --zone zone-1', 'strata stores list --status Error -q'],
    async run(ctx) {
      const command = 'stores list';
      const filters = {
        zoneId: optString(ctx.values, 'zone'),
        role: parseFlag(ctx.values, 'role', command, parseRole),
        status: parseFlag(ctx.values, 'status', command, parseStoreStatus),
        provider: optString(ctx.values, 'provider'),
      };
      const page = await fetchList(ctx, command, filters, (q) => ctx.client.listStores(q));
      printList(ctx, page, 'stores', storeTable, (s) => s.id);
      return ExitCode.Ok;
    },
  },
  {
    path: ['stores', 'get'],
    summary: 'Show one data store, with its capacity and allocation.',
    args: ['id'],
    async run(ctx) {
      const store = await ctx.client.getStore(ctx.args[0]!);
      printResult(ctx, store, store.id, storeDetails(store, ctx.now));
      return ExitCode.Ok;
    },
  },
  {
    path: ['stores', 'add'],
    summary: 'Add a data store and wait until it is initialized and attached.',
    usage: '--name <name> --provider <id> --role primary|image --zone <zoneId> [options]',
    options: {
      name: { type: 'string', valueName: '<name>', description: 'display name' },
      provider: { type: 'string', valueName: '<id>', description: 'store provider, e.g. nfs, s3' },
      role: {
        type: 'string',
        valueName: '<role>',
        description: 'primary (volumes) or image (templates, backups)',
      },
      zone: { type: 'string', valueName: '<zoneId>', description: 'zone of the store' },
      scope: {
        type: 'string',
        valueName: '<scope>',
        description: 'zone, cluster or host (default: host with --host, cluster with --cluster, else zone)',
      },
      cluster: {
        type: 'string',
        valueName: '<clusterId>',
        description: 'cluster, for cluster and host scope',
      },
      host: { type: 'string', valueName: '<hostId>', description: 'host, for host scope' },
      ...TUNING_OPTIONS,
      detail: {
        type: 'string',
        multiple: true,
        valueName: '<key=value>',
        description: "provider setting (repeat), e.g. server=10.0.0.5 path=/export; see the provider's docs",
      },
      ...WAIT_OPTIONS,
    },
    examples: [
      'strata stores add --name nfs-1 --provider nfs --role primary --zone zone-1 --cluster cl-1 \\',
      '    --capacity 2TiB --overprovisioning 2 --tag ssd --detail server=10.0.0.5 --detail path=/export/primary',
      'strata stores add --name images --provider s3 --role image --zone zone-1 --detail bucket=strata-images --no-wait',
    ],
    async run(ctx) {
      const command = 'stores add';
      const { values } = ctx;
      const clusterId = optString(values, 'cluster');
      const hostId = optString(values, 'host');
      const scopeType =
        parseFlag(values, 'scope', command, parseScope) ?? (hostId ? 'host' : clusterId ? 'cluster' : 'zone');
      if (scopeType === 'cluster' && !clusterId)
        throw new UsageError('--scope cluster needs --cluster', command);
      if (scopeType === 'host' && !hostId) throw new UsageError('--scope host needs --host', command);
      if (scopeType === 'zone' && (clusterId || hostId)) {
        throw new UsageError('--cluster and --host do not apply to a zone-wide store', command);
      }
      if (scopeType === 'cluster' && hostId) {
        throw new UsageError('--host does not apply to a cluster-wide store', command);
      }
      const tags = collectTags(values);
      const request: NewStore = {
        name: requireString(values, 'name', command),
        provider: requireString(values, 'provider', command),
        role: requireFlag(values, 'role', command, parseRole),
        scope: withoutUndefined({
          type: scopeType,
          zoneId: requireString(values, 'zone', command),
          clusterId,
          hostId,
        }),
        ...withoutUndefined(tuning(ctx, command)),
        ...(tags.length ? { tags } : {}),
        details: collectDetails(values, command),
      };
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await ctx.client.createStore(request);
      return finishAsync(
        ctx,
        timeoutMs,
        accepted,
        (s) => `Added store ${s.name} (${s.id}), status ${s.status}.`,
      );
    },
  },
  {
    path: ['stores', 'update'],
    summary: "Change a store's name, capacity, overprovisioning, threshold or tags.",
    args: ['id'],
    options: {
      name: { type: 'string', valueName: '<name>', description: 'new display name' },
      ...TUNING_OPTIONS,
      tag: {
        ...TUNING_OPTIONS['tag']!,
        description: 'replace the tags with these (repeat, or comma-separate)',
      },
      'clear-tags': { type: 'boolean', description: 'remove all tags' },
    },
    examples: [
      'strata stores update st-123 --capacity 4TiB --threshold 85%',
      'strata stores update st-123 --tag ssd,fast',
    ],
    async run(ctx) {
      const command = 'stores update';
      const tags = collectTags(ctx.values);
      const clear = optFlag(ctx.values, 'clear-tags');
      if (clear && tags.length) throw new UsageError('--clear-tags and --tag contradict each other', command);
      const patch: StorePatch = withoutUndefined({
        name: optString(ctx.values, 'name'),
        ...tuning(ctx, command),
        tags: clear ? [] : tags.length ? tags : undefined,
      });
      if (Object.keys(patch).length === 0) {
        throw new UsageError('nothing to update: give at least one of the options', command);
      }
      const store = await ctx.client.updateStore(ctx.args[0]!, patch);
      printResult(ctx, store, store.id, `Updated store ${store.name} (${store.id}).`);
      return ExitCode.Ok;
    },
  },
  statusCommand('enable'),
  statusCommand('disable'),
  {
    path: ['stores', 'maintain'],
    summary: 'Put a store into maintenance: its objects are moved off or stopped first.',
    args: ['id'],
    options: { ...WAIT_OPTIONS },
    async run(ctx) {
      const timeoutMs = waitTimeout(ctx, 'stores maintain');
      const accepted = await ctx.client.startMaintenance(ctx.args[0]!);
      return finishAsync(ctx, timeoutMs, accepted, (s) => `Store ${s.name} (${s.id}) is now ${s.status}.`);
    },
  },
  {
    path: ['stores', 'cancel-maintenance'],
    summary: 'Bring a store back from maintenance.',
    args: ['id'],
    options: { ...WAIT_OPTIONS },
    async run(ctx) {
      const timeoutMs = waitTimeout(ctx, 'stores cancel-maintenance');
      const accepted = await ctx.client.cancelMaintenance(ctx.args[0]!);
      return finishAsync(ctx, timeoutMs, accepted, (s) => `Store ${s.name} (${s.id}) is now ${s.status}.`);
    },
  },
  {
    path: ['stores', 'delete'],
    summary: 'Delete an empty store (refused while it still holds objects).',
    args: ['id'],
    async run(ctx) {
      const id = ctx.args[0]!;
      await withHint(
        () => ctx.client.deleteStore(id),
        (error) =>
          error.status === 409 ? `see what it still holds with: strata stores objects ${id}` : undefined,
      );
      printResult(ctx, { id, deleted: true }, id, `Deleted store ${id}.`);
      return ExitCode.Ok;
    },
  },
  {
    path: ['stores', 'objects'],
    summary: `List what a store physically holds (up to ${INVENTORY_LIMIT} objects), and which entity owns each.`,
    args: ['id'],
    options: { ...WAIT_OPTIONS },
    examples: [
      'strata stores objects st-1',
      "strata stores objects st-1 --json | jq -r '.objects[] | select(.owner == null) | .path'",
    ],
    async run(ctx) {
      const command = 'stores objects';
      const id = ctx.args[0]!;
      const timeoutMs = waitTimeout(ctx, command);
      // The listing is host work (it reads the storage itself), hence a job rather than a paged GET.
      const accepted = await ctx.client.inventoryStore(id);
      const { exitCode, result } = await followForResult<StoreInventory>(
        ctx,
        timeoutMs,
        accepted,
        `Inventory of store ${id}`,
      );
      if (result) printInventory(ctx, result);
      return exitCode;
    },
  },
];
