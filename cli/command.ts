/**
 * The small command framework: declarative command specs, option access helpers, usage errors and
 * generated help. Parsing itself is node:util parseArgs.
 */
import { type ByteProgress, createByteProgress, silentByteProgress } from './byte-progress.js';
import type { StrataClient } from './http-client.js';
import type { PollOptions, ProgressReporter, ProgressStream } from './progress.js';
import { createProgressReporter, silentReporter } from './progress.js';
import type { Env } from './sigv4.js';

export interface OutStream extends ProgressStream {
  write(chunk: string): unknown;
}

/** Exit statuses the CLI promises to scripts. */
export const ExitCode = {
  Ok: 0,
  /** The API refused the request, a job failed, or the API could not be reached. */
  Failure: 1,
  /** The command line itself is wrong. */
  Usage: 2,
  /** A wait gave up before the job finished (the job keeps running). */
  Timeout: 3,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export class UsageError extends Error {
  override readonly name = 'UsageError';
  constructor(
    message: string,
    /** The command whose help the user should read, e.g. `stores add`. */
    readonly command?: string,
  ) {
    super(message);
  }
}

const hints = new WeakMap<Error, string>();

/** Attaches advice that the top level prints under the error message. */
export function addHint(error: Error, hint: string): void {
  hints.set(error, hint);
}

export function hintFor(error: Error): string | undefined {
  return hints.get(error);
}

export interface OptionSpec {
  type: 'string' | 'boolean';
  multiple?: boolean;
  short?: string;
  /** Placeholder shown in help, e.g. `<size>`. */
  valueName?: string;
  description: string;
}

export type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

export interface CommandContext {
  args: string[];
  values: Values;
  client: StrataClient;
  out: Output;
  now: Date;
  poll?: PollOptions;
  sleep?: (ms: number) => Promise<void>;
}

export interface CommandSpec {
  /** Words after `strata`, e.g. ['stores', 'add']. */
  path: string[];
  summary: string;
  /** Positional argument names, all required, e.g. ['id']. */
  args?: string[];
  /** The usage line after `strata <path>`, when the generated one would be unclear. */
  usage?: string;
  options?: Record<string, OptionSpec>;
  examples?: string[];
  /**
   * API field → the flag that sets it, for this command only, where the global mapping would point
   * elsewhere (`sizeBytes` is the <file> argument of an upload but --size of a volume).
   */
  fieldFlags?: Record<string, string>;
  run(ctx: CommandContext): Promise<number>;
}

export const GLOBAL_OPTIONS: Record<string, OptionSpec> = {
  json: { type: 'boolean', description: 'print raw JSON on stdout, for scripts' },
  quiet: { type: 'boolean', short: 'q', description: 'print only ids; no progress display' },
  'api-url': {
    type: 'string',
    valueName: '<url>',
    description: 'API base URL (default: $STRATA_API_URL, else http://127.0.0.1:$STRATA_PORT or :8787)',
  },
  'idempotency-key': {
    type: 'string',
    valueName: '<key>',
    description: 'reuse this Idempotency-Key instead of a fresh one (to re-run a command safely)',
  },
  help: { type: 'boolean', short: 'h', description: 'show help' },
};

/** Where command results go: stdout for data, stderr for notes and progress. */
export class Output {
  constructor(
    private readonly stdout: OutStream,
    private readonly stderr: OutStream,
    readonly json: boolean,
    readonly quiet: boolean,
  ) {}

  /** The raw value as JSON (only used with --json). */
  data(value: unknown): void {
    this.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  }

  /** A line of the command's result. */
  print(text: string): void {
    this.stdout.write(`${text}\n`);
  }

  /** Commentary that scripts need not parse (hints, "more results"); silenced by --quiet. */
  note(text: string): void {
    if (!this.quiet) this.stderr.write(`${text}\n`);
  }

  error(text: string): void {
    this.stderr.write(`${text}\n`);
  }

  progress(): ProgressReporter {
    return this.quiet ? silentReporter : createProgressReporter(this.stderr);
  }

  /** A display of bytes transferred (uploads, hashing) on stderr; silent with --quiet. */
  byteProgress(label: string, totalBytes: number): ByteProgress {
    return this.quiet ? silentByteProgress : createByteProgress(this.stderr, label, totalBytes);
  }
}

export function optString(values: Values, name: string): string | undefined {
  const value = values[name];
  return typeof value === 'string' ? value : undefined;
}

export function optList(values: Values, name: string): string[] {
  const value = values[name];
  if (Array.isArray(value)) return value.filter((item): item is string => typeof item === 'string');
  return typeof value === 'string' ? [value] : [];
}

export function optFlag(values: Values, name: string): boolean {
  return values[name] === true;
}

export function requireString(values: Values, name: string, command: string): string {
  const value = optString(values, name);
  if (value === undefined || value.trim() === '') throw new UsageError(`--${name} is required`, command);
  return value;
}

/** Runs a value parser and turns its complaint into a usage error naming the flag. */
export function parseFlag<T>(
  values: Values,
  name: string,
  command: string,
  parse: (text: string) => T,
): T | undefined {
  const text = optString(values, name);
  if (text === undefined) return undefined;
  try {
    return parse(text);
  } catch (error) {
    throw new UsageError(`--${name}: ${error instanceof Error ? error.message : String(error)}`, command);
  }
}

/** Like {@link parseFlag}, for a flag that must be given. */
export function requireFlag<T>(values: Values, name: string, command: string, parse: (text: string) => T): T {
  requireString(values, name, command);
  return parseFlag(values, name, command, parse)!;
}

function optionLabel(name: string, spec: OptionSpec): string {
  const short = spec.short ? `-${spec.short}, ` : '';
  const value = spec.type === 'string' ? ` ${spec.valueName ?? '<value>'}` : '';
  const repeat = spec.multiple ? '...' : '';
  return `${short}--${name}${value}${repeat}`;
}

function optionLines(options: Record<string, OptionSpec>): string[] {
  const entries = Object.entries(options);
  const labels = entries.map(([name, spec]) => optionLabel(name, spec));
  const width = Math.max(...labels.map((label) => label.length));
  return entries.map(([, spec], i) => `  ${labels[i]!.padEnd(width)}  ${spec.description}`);
}

export function commandHelp(spec: CommandSpec): string {
  const args = (spec.args ?? []).map((arg) => `<${arg}>`).join(' ');
  const usage = spec.usage ?? [args, spec.options ? '[options]' : ''].filter(Boolean).join(' ');
  const lines = [`Usage: strata ${spec.path.join(' ')}${usage ? ` ${usage}` : ''}`, '', spec.summary];
  if (spec.options && Object.keys(spec.options).length > 0) {
    lines.push('', 'Options:', ...optionLines(spec.options));
  }
  const globals = Object.fromEntries(Object.entries(GLOBAL_OPTIONS).filter(([name]) => name !== 'help'));
  lines.push('', 'Global options:', ...optionLines(globals));
  if (spec.examples?.length) lines.push('', 'Examples:', ...spec.examples.map((example) => `  ${example}`));
  return `${lines.join('\n')}\n`;
}

/** Help for a group of commands; `group` may be nested (`volumes access`). */
export function groupHelp(group: string, specs: readonly CommandSpec[]): string {
  const depth = group.split(' ').length;
  const width = Math.max(...specs.map((spec) => spec.path.slice(depth).join(' ').length));
  const lines = [
    `Usage: strata ${group} <command> [options]`,
    '',
    'Commands:',
    ...specs.map((spec) => `  ${spec.path.slice(depth).join(' ').padEnd(width)}  ${spec.summary}`),
    '',
    `Run 'strata ${group} <command> --help' for a command's options.`,
  ];
  return `${lines.join('\n')}\n`;
}

export function rootHelp(groups: ReadonlyArray<readonly [string, string]>): string {
  const width = Math.max(...groups.map(([name]) => name.length));
  const lines = [
    'strata: command-line client for the Strata storage orchestration API',
    '',
    'Usage: strata <command> [subcommand] [options]',
    '',
    'Commands:',
    ...groups.map(([name, summary]) => `  ${name.padEnd(width)}  ${summary}`),
    '',
    'Global options:',
    ...optionLines(GLOBAL_OPTIONS),
    '',
    'Environment:',
    '  STRATA_API_URL   API base URL (an execute-api URL is signed with SigV4 automatically)',
    '  STRATA_PORT      port of the embedded stack when STRATA_API_URL is unset (default 8787)',
    '  STRATA_SIGV4     1 to force SigV4 signing (custom domains), 0 to turn it off',
    '  STRATA_API_TOKEN bearer token for the embedded stack (default: from its api-tokens.json)',
    '  STRATA_API_ROLE  readOnly, operator or admin: whose token to read from api-tokens.json (admin)',
    '  STRATA_DATA_DIR  the embedded stack data directory holding api-tokens.json (default .strata)',
    '  AWS_REGION, AWS_PROFILE and the usual AWS credential sources, for signing',
    '',
    'Exit status: 0 ok, 1 API error or failed job, 2 usage error, 3 wait timed out.',
    "Run 'strata <command> --help' for details.",
  ];
  return `${lines.join('\n')}\n`;
}

export type { Env };
