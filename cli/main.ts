/**
 * The `strata` command line: dispatch, global flags, and turning failures into exit codes.
 *
 * `run()` does everything except touch the process, so tests drive it in-process with their own
 * streams and environment; `main()` is the thin process wrapper bin/strata.js calls.
 */
import { parseArgs } from 'node:util';
import { ApiTokenConfigError, resolveApiToken } from './api-token.js';
import {
  type CommandContext,
  type CommandSpec,
  commandHelp,
  ExitCode,
  GLOBAL_OPTIONS,
  groupHelp,
  hintFor,
  type OptionSpec,
  Output,
  type OutStream,
  optFlag,
  optString,
  rootHelp,
  UsageError,
  type Values,
} from './command.js';
import { healthCommands } from './commands/health.js';
import { hostCommands } from './commands/hosts.js';
import { jobCommands } from './commands/jobs.js';
import { POLICY_GROUP, snapshotPolicyCommands } from './commands/policies.js';
import { reconcileCommands } from './commands/reconcile.js';
import { snapshotCommands } from './commands/snapshots.js';
import { storeCommands } from './commands/stores.js';
import { templateCommands } from './commands/templates.js';
import { volumeCommands } from './commands/volumes.js';
import { CliApiError, CliConnectionError, resolveBaseUrl, StrataClient } from './http-client.js';
import type { PollOptions } from './progress.js';
import { type Env, SigningConfigError, signerFor } from './sigv4.js';

export interface RunOptions {
  stdout: OutStream;
  stderr: OutStream;
  env: Env;
  /** Clock for relative times ("5m ago"). */
  now?: () => Date;
  /** Job polling cadence; tests shorten it. */
  poll?: PollOptions;
}

export const COMMANDS: readonly CommandSpec[] = [
  ...healthCommands,
  ...hostCommands,
  ...storeCommands,
  ...templateCommands,
  ...volumeCommands,
  ...snapshotCommands,
  ...snapshotPolicyCommands,
  ...jobCommands,
  ...reconcileCommands,
];

const GROUPS: ReadonlyArray<readonly [string, string]> = [
  ['health', 'check that the API answers'],
  ['hosts', 'hypervisor hosts: list, get, add, probe, disable, enable, remove'],
  [
    'stores',
    'data stores: list, get, add, update, enable, disable, maintain, cancel-maintenance, delete, objects',
  ],
  ['templates', 'templates and ISOs: list, get, register, upload, copy, delete'],
  ['volumes', 'volumes: list, get, create, resize, migrate, delete, access grant|revoke'],
  ['snapshots', 'volume snapshots: list, get, take, backup, revert, delete, restore'],
  [POLICY_GROUP, 'scheduled snapshots (alias: policies): create, list, get, delete'],
  ['jobs', 'asynchronous jobs: list, get, wait'],
  ['reconcile', 'sweep the stores for orphans (--dry-run to report only)'],
];

/** Other names a group answers to; the command runs (and its messages speak) under the real name. */
const GROUP_ALIASES: Readonly<Record<string, string>> = { policies: POLICY_GROUP };

/** Global options that take a value, so the command-word scan can skip that value. */
const GLOBAL_VALUE_FLAGS = new Set(
  Object.entries(GLOBAL_OPTIONS)
    .filter(([, spec]) => spec.type === 'string')
    .map(([name]) => `--${name}`),
);

interface Resolved {
  words: string[];
  rest: string[];
  spec?: CommandSpec;
}

/**
 * Pulls the command words (`stores add`) out of argv wherever global flags put them, leaving the
 * rest for parseArgs. Stops at the first word that does not extend a known command path.
 */
function resolve(argv: readonly string[]): Resolved {
  const words: string[] = [];
  const rest: string[] = [];
  let spec: CommandSpec | undefined;
  let scanning = true;
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!;
    if (!scanning || token === '--') {
      scanning = false;
      rest.push(token);
      continue;
    }
    if (token.startsWith('-')) {
      rest.push(token);
      if (GLOBAL_VALUE_FLAGS.has(token) && i + 1 < argv.length) rest.push(argv[++i]!);
      continue;
    }
    const candidate = [...words, token];
    const extends_ = COMMANDS.some((c) => candidate.every((word, j) => c.path[j] === word));
    if (!spec && extends_) {
      words.push(token);
      spec = COMMANDS.find(
        (c) => c.path.length === candidate.length && c.path.every((w, j) => w === candidate[j]),
      );
      continue;
    }
    rest.push(token);
    if (!spec) scanning = false;
  }
  return spec ? { words, rest, spec } : { words, rest };
}

function wantsHelp(tokens: readonly string[]): boolean {
  const end = tokens.indexOf('--');
  return (end === -1 ? tokens : tokens.slice(0, end)).some((t) => t === '--help' || t === '-h');
}

function firstPositional(tokens: readonly string[]): string | undefined {
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!;
    if (token === '--') return tokens[i + 1];
    if (!token.startsWith('-')) return token;
    if (GLOBAL_VALUE_FLAGS.has(token)) i++;
  }
  return undefined;
}

/** Replaces a group alias in the command-word position with the group's name. */
function expandAlias(argv: readonly string[]): readonly string[] {
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i]!;
    if (token === '--') return argv;
    if (token.startsWith('-')) {
      if (GLOBAL_VALUE_FLAGS.has(token)) i++;
      continue;
    }
    const name = GROUP_ALIASES[token];
    return name ? [...argv.slice(0, i), name, ...argv.slice(i + 1)] : argv;
  }
  return argv;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length]!;
}

function suggestion(word: string, choices: readonly string[]): string {
  const best = choices
    .map((choice) => ({ choice, distance: editDistance(word, choice) }))
    .sort((x, y) => x.distance - y.distance)[0];
  return best && best.distance <= 2 ? ` Did you mean '${best.choice}'?` : '';
}

function parseCommandLine(spec: CommandSpec, tokens: string[]): { values: Values; positionals: string[] } {
  const options: Record<string, OptionSpec> = { ...GLOBAL_OPTIONS, ...spec.options };
  const parseOptions = Object.fromEntries(
    Object.entries(options).map(([name, o]) => [
      name,
      { type: o.type, ...(o.multiple ? { multiple: true } : {}), ...(o.short ? { short: o.short } : {}) },
    ]),
  );
  const command = spec.path.join(' ');
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({ args: tokens, options: parseOptions, allowPositionals: true, strict: true });
  } catch (error) {
    // parseArgs' messages are clear but mention its own API ("To specify a positional argument…"); keep the first sentence.
    const message =
      error instanceof Error ? error.message.split(/\.\s/)[0]!.replace(/\.$/, '') : String(error);
    throw new UsageError(message, command);
  }
  for (const [name, o] of Object.entries(options)) {
    const value = parsed.values[name];
    // A string flag followed by nothing parses fine as --flag '' in some spellings; refuse empty values.
    if (o.type === 'string' && value === '') throw new UsageError(`--${name} needs a value`, command);
  }
  const expected = spec.args ?? [];
  if (parsed.positionals.length < expected.length) {
    throw new UsageError(`missing <${expected[parsed.positionals.length]}>`, command);
  }
  if (parsed.positionals.length > expected.length) {
    throw new UsageError(`unexpected argument '${parsed.positionals[expected.length]}'`, command);
  }
  return parsed;
}

// Fields named in API validation errors, and the flag that sets each, so the message points at
// what to change on the command line.
const FIELD_FLAGS: Record<string, string> = {
  name: '--name',
  zoneId: '--zone',
  clusterId: '--cluster',
  hostId: '--host',
  instanceId: '--instance-id',
  hypervisor: '--hypervisor',
  provider: '--provider',
  role: '--role',
  'scope.type': '--scope',
  'scope.zoneId': '--zone',
  'scope.clusterId': '--cluster',
  'scope.hostId': '--host',
  capacityBytes: '--capacity',
  overprovisioning: '--overprovisioning',
  disableThreshold: '--threshold',
  tags: '--tag',
  details: '--detail',
  limit: '--limit',
  cursor: '--cursor',
  status: '--status',
  state: '--state',
  kind: '--kind',
  targetId: '--target',
  url: '--url',
  format: '--format',
  type: '--type',
  checksum: '--checksum',
  storeId: '--store',
  sizeBytes: 'the <file> argument',
};

function flagForField(field: string, spec?: CommandSpec): string | undefined {
  if (field === 'id') return 'the <id> argument';
  // Query parameters come back as `query.zoneId`, array items as `tags.2`.
  const plain = field.replace(/^query\./, '').replace(/(\.\d+)+$/, '');
  const own = spec?.fieldFlags?.[plain];
  if (own) return own;
  if (FIELD_FLAGS[plain]) return FIELD_FLAGS[plain];
  const detail = /^details\.(.+)$/.exec(plain)?.[1];
  return detail ? `--detail ${detail}=…` : undefined;
}

function extraText(value: unknown): string {
  if (Array.isArray(value)) return value.map((item) => extraText(item)).join(', ');
  return typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value);
}

function reportError(error: unknown, out: Output, spec?: CommandSpec): number {
  if (error instanceof UsageError) {
    out.error(`Usage error: ${error.message}`);
    out.error(`Run 'strata ${error.command ? `${error.command} ` : ''}--help' for usage.`);
    return ExitCode.Usage;
  }
  if (error instanceof CliApiError) {
    out.error(`Error: ${error.message}`);
    if (error.field) {
      const flag = flagForField(error.field, spec);
      out.error(`  field: ${error.field}${flag ? ` (set with ${flag})` : ''}`);
    }
    for (const [key, value] of Object.entries(error.extra)) {
      if (value !== undefined) out.error(`  ${key}: ${extraText(value)}`);
    }
    out.error(
      `  code:  ${error.code} (HTTP ${error.status})${error.requestId ? `, request ${error.requestId}` : ''}`,
    );
  } else if (
    error instanceof CliConnectionError ||
    error instanceof SigningConfigError ||
    error instanceof ApiTokenConfigError
  ) {
    out.error(`Error: ${error.message}`);
  } else {
    out.error(`Error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  }
  const hint = error instanceof Error ? hintFor(error) : undefined;
  if (hint) out.error(`Hint: ${hint}`);
  return ExitCode.Failure;
}

/** Runs one CLI invocation and returns its exit code. Never exits the process or throws. */
export async function run(argv: readonly string[], options: RunOptions): Promise<number> {
  const { stdout, stderr, env } = options;
  // Until the flags are parsed, write plainly.
  let out = new Output(stdout, stderr, false, false);
  let command: CommandSpec | undefined;
  try {
    const { words, rest, spec } = resolve(expandAlias(argv));
    command = spec;
    if (!spec) {
      if (words.length === 0) {
        const word = firstPositional(rest);
        if (word === 'help') return run([...argv.filter((t) => t !== 'help'), '--help'], options);
        if (word !== undefined) {
          throw new UsageError(
            `unknown command '${word}'.${suggestion(word, [
              ...GROUPS.map(([name]) => name),
              ...Object.keys(GROUP_ALIASES),
            ])}`,
          );
        }
        if (wantsHelp(rest)) {
          stdout.write(rootHelp(GROUPS));
          return ExitCode.Ok;
        }
        stderr.write(rootHelp(GROUPS));
        return ExitCode.Usage;
      }
      // The words so far name a group, possibly nested (`volumes access`).
      const group = words.join(' ');
      const members = COMMANDS.filter((c) => words.every((w, j) => c.path[j] === w));
      const word = firstPositional(rest);
      if (word !== undefined) {
        const names = [...new Set(members.map((c) => c.path[words.length]!))];
        throw new UsageError(`unknown command '${group} ${word}'.${suggestion(word, names)}`, group);
      }
      if (wantsHelp(rest)) {
        stdout.write(groupHelp(group, members));
        return ExitCode.Ok;
      }
      stderr.write(groupHelp(group, members));
      return ExitCode.Usage;
    }
    if (wantsHelp(rest)) {
      stdout.write(commandHelp(spec));
      return ExitCode.Ok;
    }
    const { values, positionals } = parseCommandLine(spec, rest);
    out = new Output(stdout, stderr, optFlag(values, 'json'), optFlag(values, 'quiet'));
    const baseUrl = resolveBaseUrl(optString(values, 'api-url'), env);
    let parsedUrl: URL;
    try {
      parsedUrl = new URL(baseUrl);
    } catch {
      throw new UsageError(
        `'${baseUrl}' is not a URL (expected e.g. http://127.0.0.1:8787)`,
        spec.path.join(' '),
      );
    }
    if (parsedUrl.protocol !== 'http:' && parsedUrl.protocol !== 'https:') {
      throw new UsageError(`'${baseUrl}' is not an http(s) URL`, spec.path.join(' '));
    }
    const idempotencyKey = optString(values, 'idempotency-key');
    const signer = signerFor(parsedUrl, env);
    const bearerToken = signer ? undefined : resolveApiToken(parsedUrl, env, process.cwd());
    const client = new StrataClient({
      baseUrl,
      ...(signer ? { signer } : {}),
      ...(bearerToken ? { bearerToken } : {}),
      ...(idempotencyKey ? { idempotencyKey } : {}),
    });
    const ctx: CommandContext = {
      args: positionals,
      values,
      client,
      out,
      now: options.now?.() ?? new Date(),
      ...(options.poll ? { poll: options.poll } : {}),
    };
    return await spec.run(ctx);
  } catch (error) {
    return reportError(error, out, command);
  }
}

/** The process entry point used by bin/strata.js. */
export async function main(): Promise<void> {
  // `strata jobs list | head` closes the pipe early; that is not an error worth a stack trace.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw error;
  });
  process.exitCode = await run(process.argv.slice(2), {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
  });
}
