import type { Host, HostProbeResult, HostRuntime, Prerequisite } from '../api-types.js';
import { type CommandSpec, ExitCode, optString, parseFlag, requireString } from '../command.js';
import { relativeTime, renderDetails, renderTable, timestamp } from '../format.js';
import {
  fetchList,
  followForResult,
  oneOf,
  PAGE_OPTIONS,
  printList,
  printResult,
  WAIT_OPTIONS,
  waitTimeout,
} from './shared.js';

const parseHostStatus = oneOf(['Up', 'Disabled', 'Down'] as const);

/** Build ids are content hashes; this many characters tell them apart in a table. */
const SHORT_BUILD = 12;

/** The names the tools go by, for the prerequisite keys the runtime reports today. */
const PREREQUISITE_NAMES: Record<string, string> = {
  node: 'Node.js',
  qemuImg: 'qemu-img',
  qemuNbd: 'qemu-nbd',
};

/** The RUNTIME cell: what a glance at the list must tell, a host that needs an upgrade above all. */
function runtimeCell(runtime: HostRuntime | undefined): string {
  if (!runtime) return 'not probed';
  if (runtime.current === false) return 'upgrade!';
  return runtime.build.slice(0, SHORT_BUILD);
}

function prerequisiteText(check: Prerequisite): string {
  const version = check.version ? ` (${check.version})` : '';
  if (check.ok) return `ok${version}`;
  return `missing${version}${check.problem ? `: ${check.problem}` : ''}`;
}

/** The runtime report as label/value lines: build, readiness, platform, then each prerequisite. */
function runtimeDetails(runtime: Partial<HostRuntime>, now: Date): string {
  const build =
    runtime.build === undefined
      ? undefined
      : `${runtime.build} (${runtime.current === false ? 'upgrade needed' : 'current'})`;
  const platform = [runtime.platform, runtime.arch].filter(Boolean).join('/');
  return renderDetails([
    ['Build', build],
    ['Ready', runtime.ready === undefined ? undefined : runtime.ready ? 'yes' : 'no'],
    ['Platform', platform || undefined],
    ['Checked', runtime.checkedAt && timestamp(runtime.checkedAt, now)],
    ...Object.entries(runtime.prerequisites ?? {}).map(
      ([key, check]) => [PREREQUISITE_NAMES[key] ?? key, prerequisiteText(check)] as const,
    ),
  ]);
}

function hostTable(hosts: Host[], now: Date): string {
  return renderTable(hosts, [
    { header: 'ID', value: (h) => h.id },
    { header: 'NAME', value: (h) => h.name },
    { header: 'ZONE', value: (h) => h.zoneId },
    { header: 'CLUSTER', value: (h) => h.clusterId },
    { header: 'INSTANCE', value: (h) => h.instanceId },
    { header: 'HYPERVISOR', value: (h) => h.hypervisor },
    { header: 'STATUS', value: (h) => h.status },
    { header: 'RUNTIME', value: (h) => runtimeCell(h.runtime) },
    { header: 'STORES', value: (h) => String(h.attachedStoreIds?.length ?? 0), align: 'right' },
    { header: 'AGE', value: (h) => relativeTime(h.createdAt, now) },
  ]);
}

function hostDetails(host: Host, now: Date): string {
  const details = renderDetails([
    ['ID', host.id],
    ['Name', host.name],
    ['Zone', host.zoneId],
    ['Cluster', host.clusterId],
    ['Instance', host.instanceId],
    ['Hypervisor', host.hypervisor],
    ['Status', host.status],
    ['Stores', host.attachedStoreIds?.length ? host.attachedStoreIds.join(', ') : '-'],
    ['Version', String(host.version)],
    ['Created', timestamp(host.createdAt, now)],
    ['Updated', timestamp(host.updatedAt, now)],
  ]);
  const runtime = host.runtime
    ? runtimeDetails(host.runtime, now)
    : `not probed (check it with: strata hosts probe ${host.id})`;
  return `${details}\n\nRuntime:\n${runtime}`;
}

function statusCommand(verb: 'enable' | 'disable'): CommandSpec {
  const status = verb === 'enable' ? 'Up' : 'Disabled';
  return {
    path: ['hosts', verb],
    summary:
      verb === 'enable'
        ? 'Put a disabled host back into service (status Up).'
        : 'Stop sending new work to a host (status Disabled); running work finishes.',
    args: ['id'],
    async run(ctx) {
      const host = await ctx.client.setHostStatus(ctx.args[0]!, status);
      printResult(ctx, host, host.id, `Host ${host.name} (${host.id}) is now ${host.status}.`);
      return ExitCode.Ok;
    },
  };
}

export const hostCommands: CommandSpec[] = [
  {
    path: ['hosts', 'list'],
    summary: 'List hypervisor hosts.',
    options: {
      zone: { type: 'string', valueName: '<zoneId>', description: 'only hosts in this zone' },
      cluster: { type: 'string', valueName: '<clusterId>', description: 'only hosts in this cluster' },
      status: { type: 'string', valueName: '<status>', description: 'Up, Disabled or Down' },
      ...PAGE_OPTIONS,
    },
    examples: ['strata hosts list --zone zone-1', 'strata hosts list --status Down --json'],
    async run(ctx) {
      const filters = {
        zoneId: optString(ctx.values, 'zone'),
        clusterId: optString(ctx.values, 'cluster'),
        status: parseFlag(ctx.values, 'status', 'hosts list', parseHostStatus),
      };
      const page = await fetchList(ctx, 'hosts list', filters, (q) => ctx.client.listHosts(q));
      printList(ctx, page, 'hosts', hostTable, (h) => h.id);
      return ExitCode.Ok;
    },
  },
  {
    path: ['hosts', 'get'],
    summary: 'Show one host.',
    args: ['id'],
    async run(ctx) {
      const host = await ctx.client.getHost(ctx.args[0]!);
      printResult(ctx, host, host.id, hostDetails(host, ctx.now));
      return ExitCode.Ok;
    },
  },
  {
    path: ['hosts', 'add'],
    summary: 'Register a hypervisor host (an SSM managed instance, or a local host in the embedded stack).',
    usage: '--name <name> --zone <zoneId> --cluster <clusterId> --instance-id <id> [--hypervisor kvm]',
    options: {
      name: { type: 'string', valueName: '<name>', description: 'display name' },
      zone: { type: 'string', valueName: '<zoneId>', description: 'zone the host lives in' },
      cluster: { type: 'string', valueName: '<clusterId>', description: 'cluster the host belongs to' },
      'instance-id': {
        type: 'string',
        valueName: '<id>',
        description: 'SSM managed-instance id (mi-… or i-…); local-<name> in the embedded stack',
      },
      hypervisor: {
        type: 'string',
        valueName: '<type>',
        description: 'hypervisor type (default: the server decides, usually kvm)',
      },
    },
    examples: [
      'strata hosts add --name kvm-01 --zone zone-1 --cluster cl-1 --instance-id mi-0123456789abcdef0',
    ],
    async run(ctx) {
      const command = 'hosts add';
      const hypervisor = optString(ctx.values, 'hypervisor');
      const host = await ctx.client.createHost({
        name: requireString(ctx.values, 'name', command),
        zoneId: requireString(ctx.values, 'zone', command),
        clusterId: requireString(ctx.values, 'cluster', command),
        instanceId: requireString(ctx.values, 'instance-id', command),
        ...(hypervisor ? { hypervisor } : {}),
      });
      printResult(ctx, host, host.id, `Added host ${host.name} (${host.id}), status ${host.status}.`);
      // Registration probes the runtime in the background; its verdict is worth a look before use.
      if (host.probeJobId && !ctx.out.json) {
        ctx.out.note(
          `Probing its runtime: job ${host.probeJobId} (follow it with: strata jobs wait ${host.probeJobId}; ` +
            `then strata hosts get ${host.id})`,
        );
      }
      return ExitCode.Ok;
    },
  },
  {
    path: ['hosts', 'probe'],
    summary: "Ask a host's runtime for its build and prerequisites (Node.js, qemu-img, qemu-nbd).",
    args: ['id'],
    options: { ...WAIT_OPTIONS },
    examples: ['strata hosts probe h-1', 'strata hosts probe h-1 --json | jq .ready'],
    async run(ctx) {
      const command = 'hosts probe';
      const id = ctx.args[0]!;
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await ctx.client.probeHost(id);
      const { exitCode, result } = await followForResult<HostProbeResult>(
        ctx,
        timeoutMs,
        accepted,
        `Probing host ${id}`,
      );
      if (!result) return exitCode;
      const verdict = result.ready ? 'ready' : 'not ready';
      // -q prints the build id: the one value a script compares across hosts.
      printResult(
        ctx,
        result,
        result.build ?? '',
        () => `Probed host ${result.hostId ?? id}: ${verdict}.\n${runtimeDetails(result, ctx.now)}`,
      );
      return exitCode;
    },
  },
  statusCommand('disable'),
  statusCommand('enable'),
  {
    path: ['hosts', 'remove'],
    summary: 'Deregister a host.',
    args: ['id'],
    async run(ctx) {
      const id = ctx.args[0]!;
      await ctx.client.deleteHost(id);
      printResult(ctx, { id, removed: true }, id, `Removed host ${id}.`);
      return ExitCode.Ok;
    },
  },
];
