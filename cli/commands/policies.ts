import type { NewSnapshotPolicy, Page, SnapshotPolicy } from '../api-types.js';
import {
  type CommandSpec,
  ExitCode,
  optFlag,
  optString,
  parseFlag,
  requireFlag,
  requireString,
} from '../command.js';
import { orDash, renderDetails, renderTable, timestamp } from '../format.js';
import type { Query, StrataClient } from '../http-client.js';
import { fetchList, PAGE_OPTIONS, printList, printResult } from './shared.js';

/** The group's name; `policies` is accepted for it (see GROUP_ALIASES in cli/main.ts). */
export const POLICY_GROUP = 'snapshot-policies';

// API fields whose flag differs from the global mapping.
const FIELD_FLAGS: Record<string, string> = {
  volumeId: '--volume',
  schedule: '--schedule',
  timeZone: '--time-zone',
  keep: '--keep',
  backup: '--backup',
};

const SCHEDULE_EXAMPLES = 'rate(1 hour), rate(30 minutes), cron(0 3 * * ? *)';

/**
 * The policy routes, through the client's generic request() (idempotency key, retry and error
 * envelope included): the shared client has no methods for them.
 */
function policyApi(client: StrataClient) {
  const path = (id: string) => `/snapshot-policies/${encodeURIComponent(id)}`;
  return {
    list: async (query: Query): Promise<Page<SnapshotPolicy>> => {
      const { body } = await client.request<Page<SnapshotPolicy> | SnapshotPolicy[]>(
        'GET',
        '/snapshot-policies',
        { query },
      );
      // Tolerate a bare array: the listing's shape is not settled in the contract.
      return Array.isArray(body) ? { items: body } : body;
    },
    get: async (id: string) => (await client.request<SnapshotPolicy>('GET', path(id))).body,
    create: async (policy: NewSnapshotPolicy) =>
      (await client.request<SnapshotPolicy>('POST', '/snapshot-policies', { body: policy })).body,
    delete: async (id: string) => {
      await client.request('DELETE', path(id));
    },
  };
}

/**
 * EventBridge Scheduler syntax: `rate(<n> <unit>)` (singular for 1, plural otherwise, as the
 * scheduler wants) or `cron(<6 fields>)`. The API checks the cron fields themselves.
 */
function parseSchedule(text: string): string {
  const value = text.trim();
  const rate = /^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$/.exec(value);
  if (rate) {
    const n = Number(rate[1]);
    const unit = rate[2]!.replace(/s$/, '');
    if (n < 1) throw new Error(`'${text}' is not a positive rate`);
    if (rate[2]!.endsWith('s') === (n === 1)) {
      throw new Error(`'${text}': write rate(1 ${unit}) or rate(${n === 1 ? 2 : n} ${unit}s)`);
    }
    return value;
  }
  const cron = /^cron\((.*)\)$/.exec(value);
  if (cron && cron[1]!.trim().split(/\s+/).length === 6) return value;
  throw new Error(`'${text}' is not a schedule (examples: ${SCHEDULE_EXAMPLES})`);
}

function parseKeep(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < 1) {
    throw new Error(`'${text}' is not a positive whole number`);
  }
  return n;
}

/** An IANA zone the runtime knows (Europe/Paris, UTC), so that a typo is caught before the API. */
function parseTimeZone(text: string): string {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: text });
  } catch {
    throw new Error(`'${text}' is not a time zone (examples: UTC, Europe/Paris, America/New_York)`);
  }
  return text;
}

function yesNo(value: boolean | undefined): string {
  return value ? 'yes' : 'no';
}

function policyTable(policies: SnapshotPolicy[]): string {
  return renderTable(policies, [
    { header: 'ID', value: (p) => p.id },
    { header: 'NAME', value: (p) => orDash(p.name) },
    { header: 'VOLUME', value: (p) => p.volumeId },
    { header: 'SCHEDULE', value: (p) => p.schedule },
    { header: 'TIME ZONE', value: (p) => orDash(p.timeZone) },
    { header: 'KEEP', value: (p) => String(p.keep), align: 'right' },
    { header: 'BACKUP', value: (p) => yesNo(p.backup) },
  ]);
}

function policyDetails(policy: SnapshotPolicy, now: Date): string {
  return renderDetails([
    ['ID', policy.id],
    ['Name', orDash(policy.name)],
    ['Volume', policy.volumeId],
    ['Schedule', policy.schedule],
    ['Time zone', orDash(policy.timeZone)],
    ['Keep', `${policy.keep} snapshot(s)`],
    ['Backup', yesNo(policy.backup)],
    ['Version', policy.version === undefined ? undefined : String(policy.version)],
    ['Created', policy.createdAt && timestamp(policy.createdAt, now)],
    ['Updated', policy.updatedAt && timestamp(policy.updatedAt, now)],
  ]);
}

function label(policy: SnapshotPolicy): string {
  return policy.name ? `${policy.name} (${policy.id})` : policy.id;
}

function policyCommands(group: string): CommandSpec[] {
  return [
    {
      path: [group, 'create'],
      summary:
        "Snapshot a volume on a schedule, keeping the latest few (the policy's older ones are deleted).",
      usage:
        '--volume <volumeId> --schedule <schedule> --keep <n> [--time-zone <zone>] [--backup] [--name <name>]',
      options: {
        volume: { type: 'string', valueName: '<volumeId>', description: 'the volume to snapshot' },
        schedule: {
          type: 'string',
          valueName: '<schedule>',
          description: `when, in EventBridge Scheduler syntax: ${SCHEDULE_EXAMPLES}`,
        },
        'time-zone': {
          type: 'string',
          valueName: '<zone>',
          description: 'IANA time zone the cron fields are read in, e.g. Europe/Paris (default: UTC)',
        },
        keep: { type: 'string', valueName: '<n>', description: "how many of the policy's snapshots to keep" },
        backup: { type: 'boolean', description: 'back each snapshot up to the image store' },
        name: { type: 'string', valueName: '<name>', description: 'display name' },
      },
      fieldFlags: FIELD_FLAGS,
      examples: [
        `strata ${group} create --volume vol-1 --schedule 'rate(1 hour)' --keep 24`,
        `strata ${group} create --volume vol-1 --schedule 'cron(0 3 * * ? *)' --time-zone Europe/Paris --keep 7 --backup --name nightly`,
      ],
      async run(ctx) {
        const command = `${group} create`;
        const { values } = ctx;
        const volumeId = requireString(values, 'volume', command);
        const schedule = requireFlag(values, 'schedule', command, parseSchedule);
        const keep = requireFlag(values, 'keep', command, parseKeep);
        const timeZone = parseFlag(values, 'time-zone', command, parseTimeZone);
        const backup = optFlag(values, 'backup');
        const name = optString(values, 'name');
        const policy = await policyApi(ctx.client).create({
          volumeId,
          schedule,
          keep,
          ...(timeZone ? { timeZone } : {}),
          // Off is the API's default; only the exception is sent.
          ...(backup ? { backup } : {}),
          ...(name ? { name } : {}),
        });
        const zone = policy.timeZone ? ` (${policy.timeZone})` : '';
        const backed = policy.backup ? ', backed up' : '';
        printResult(
          ctx,
          policy,
          policy.id,
          `Created snapshot policy ${label(policy)} for volume ${policy.volumeId}: ` +
            `${policy.schedule}${zone}, keep ${policy.keep}${backed}.`,
        );
        return ExitCode.Ok;
      },
    },
    {
      path: [group, 'list'],
      summary: 'List snapshot policies, of every volume or of one.',
      options: {
        volume: { type: 'string', valueName: '<volumeId>', description: 'only policies of this volume' },
        ...PAGE_OPTIONS,
      },
      fieldFlags: FIELD_FLAGS,
      examples: [`strata ${group} list --volume vol-1`],
      async run(ctx) {
        const command = `${group} list`;
        const api = policyApi(ctx.client);
        const filters = { volumeId: optString(ctx.values, 'volume') };
        const page = await fetchList(ctx, command, filters, (q) => api.list(q));
        printList(ctx, page, 'snapshot policies', policyTable, (p) => p.id);
        return ExitCode.Ok;
      },
    },
    {
      path: [group, 'get'],
      summary: 'Show one snapshot policy.',
      args: ['id'],
      fieldFlags: FIELD_FLAGS,
      async run(ctx) {
        const policy = await policyApi(ctx.client).get(ctx.args[0]!);
        printResult(ctx, policy, policy.id, policyDetails(policy, ctx.now));
        return ExitCode.Ok;
      },
    },
    {
      path: [group, 'delete'],
      summary: 'Delete a snapshot policy: its schedule stops.',
      args: ['id'],
      fieldFlags: FIELD_FLAGS,
      async run(ctx) {
        const id = ctx.args[0]!;
        await policyApi(ctx.client).delete(id);
        printResult(ctx, { id, deleted: true }, id, `Deleted snapshot policy ${id}.`);
        return ExitCode.Ok;
      },
    },
  ];
}

export const snapshotPolicyCommands: CommandSpec[] = policyCommands(POLICY_GROUP);
