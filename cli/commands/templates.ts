import { open, stat } from 'node:fs/promises';
import { basename, extname } from 'node:path';
import type {
  CompletedPart,
  NewTemplate,
  NewTemplateUpload,
  Template,
  TemplateAccepted,
  TemplateCopy,
  TemplateFormat,
  TemplateType,
  TemplateUploadStarted,
} from '../api-types.js';
import {
  addHint,
  type CommandContext,
  type CommandSpec,
  ExitCode,
  type OptionSpec,
  optFlag,
  optString,
  parseFlag,
  requireFlag,
  requireString,
  UsageError,
} from '../command.js';
import { bytesOrDash, formatBytes, renderDetails, renderTable, timestamp, withSection } from '../format.js';
import { DEFAULT_POLL } from '../progress.js';
import {
  PartUploadError,
  planParts,
  sha256File,
  UploadError,
  UploadInterruptedError,
  uploadParts,
} from '../upload.js';
import {
  fetchList,
  finishAccepted,
  oneOf,
  PAGE_OPTIONS,
  printList,
  printResult,
  WAIT_OPTIONS,
  waitTimeout,
  withHint,
} from './shared.js';

const FORMATS: readonly TemplateFormat[] = ['qcow2', 'raw', 'vhd', 'vmdk', 'iso'];
const parseFormat = oneOf<TemplateFormat>(FORMATS);
const parseType = oneOf<TemplateType>(['template', 'iso']);

/** 128 + SIGINT, what a shell reports for a command stopped with Ctrl-C. */
const EXIT_INTERRUPTED = 130;
/** Attempts per part, the first included: one failure and up to three retries. */
const PART_ATTEMPTS = 4;
const DEFAULT_PARALLEL = 4;
const MAX_PARALLEL = 32;

const EXTENSION_FORMATS: Record<string, TemplateFormat> = {
  '.qcow2': 'qcow2',
  '.img': 'raw',
  '.raw': 'raw',
  '.vhd': 'vhd',
  '.vmdk': 'vmdk',
  '.iso': 'iso',
};

const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]); // "QFI\xfb"

/** `{sha256}<64 hex>` or the 64 hex digits alone, as the API accepts them. */
function parseChecksum(text: string): string {
  const value = text.trim();
  if (!/^(\{sha256\})?[0-9a-f]{64}$/i.test(value)) {
    throw new Error(`'${text}' is not a sha256 checksum ({sha256}<64 hex digits>, or the hex digits alone)`);
  }
  return value;
}

function parseUrl(text: string): string {
  try {
    new URL(text);
  } catch {
    throw new Error(`'${text}' is not a URL`);
  }
  return text;
}

function parseParallel(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > MAX_PARALLEL) {
    throw new Error(`'${text}' is not a whole number from 1 to ${MAX_PARALLEL}`);
  }
  return n;
}

/** An ISO is registered as type iso unless said otherwise; every disk format is a template. */
function typeFor(ctx: CommandContext, command: string, format: TemplateFormat): TemplateType {
  return parseFlag(ctx.values, 'type', command, parseType) ?? (format === 'iso' ? 'iso' : 'template');
}

/** --zone or --store (or neither: the API picks an image store). */
function placement(ctx: CommandContext, command: string): { zoneId?: string; storeId?: string } {
  const zoneId = optString(ctx.values, 'zone');
  const storeId = optString(ctx.values, 'store');
  if (zoneId && storeId) {
    throw new UsageError('give --zone or --store, not both (a store already implies its zone)', command);
  }
  return { ...(zoneId ? { zoneId } : {}), ...(storeId ? { storeId } : {}) };
}

async function readMagic(path: string): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(QCOW2_MAGIC.length);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/**
 * The format from the file name. `.img` is ambiguous: raw by tradition, but many cloud images
 * (Ubuntu's among them) are qcow2 under that name, so the header decides.
 */
async function formatFromFile(path: string, command: string): Promise<TemplateFormat> {
  const extension = extname(path).toLowerCase();
  const format = EXTENSION_FORMATS[extension];
  if (!format) {
    throw new UsageError(
      `cannot tell the format of '${basename(path)}' from its name; give --format (${FORMATS.join(', ')})`,
      command,
    );
  }
  // An unreadable file is reported by the checksum pass or the upload, with their context.
  const magic = extension === '.img' ? await readMagic(path).catch(() => Buffer.alloc(0)) : undefined;
  if (magic?.equals(QCOW2_MAGIC)) return 'qcow2';
  return format;
}

function copiesText(template: Template): string {
  const copies = template.copies ?? [];
  if (copies.length === 0) return '-';
  return `${copies.filter((copy) => copy.status === 'Ready').length}/${copies.length} Ready`;
}

function templateTable(templates: Template[]): string {
  return renderTable(templates, [
    { header: 'ID', value: (t) => t.id },
    { header: 'NAME', value: (t) => t.name },
    { header: 'TYPE', value: (t) => t.type },
    { header: 'FORMAT', value: (t) => t.format },
    { header: 'STATUS', value: (t) => t.status },
    { header: 'VIRTUAL SIZE', value: (t) => bytesOrDash(t.virtualSizeBytes), align: 'right' },
    { header: 'COPIES', value: copiesText },
  ]);
}

/** A sha256 is 64 digits; the first 12 tell copies apart in a table, `--json` has them whole. */
function shortChecksum(checksum: string | undefined): string {
  if (!checksum) return '-';
  const match = /^(\{[^}]+\})?([0-9a-f]+)$/i.exec(checksum);
  return match && match[2]!.length > 16 ? `${match[1] ?? ''}${match[2]!.slice(0, 12)}…` : checksum;
}

function copyProgress(copy: TemplateCopy): string {
  const parts = [
    copy.progress === undefined ? undefined : `${Math.round(copy.progress)}%`,
    copy.bytesTransferred === undefined ? undefined : formatBytes(copy.bytesTransferred),
  ].filter((part): part is string => part !== undefined);
  if (parts.length === 2) return `${parts[0]} (${parts[1]})`;
  return parts[0] ?? '-';
}

function copyTable(copies: TemplateCopy[]): string {
  return renderTable(copies, [
    { header: 'STORE', value: (c) => c.storeId },
    { header: 'STATUS', value: (c) => c.status },
    { header: 'SIZE', value: (c) => bytesOrDash(c.sizeBytes), align: 'right' },
    { header: 'CHECKSUM', value: (c) => shortChecksum(c.checksum) },
    { header: 'PROGRESS', value: copyProgress },
    { header: 'REFS', value: (c) => String(c.refCount ?? 0), align: 'right' },
    { header: 'REASON', value: (c) => c.statusReason ?? '' },
  ]);
}

function templateDetails(template: Template, now: Date): string {
  const details = renderDetails([
    ['ID', template.id],
    ['Name', template.name],
    ['Type', template.type],
    ['Format', template.format],
    ['Status', template.status],
    ['Virtual size', bytesOrDash(template.virtualSizeBytes)],
    ['Zone', template.zoneId],
    ['URL', template.url],
    ['Checksum', template.checksum],
    ['Version', String(template.version)],
    ['Created', timestamp(template.createdAt, now)],
    ['Updated', timestamp(template.updatedAt, now)],
  ]);
  return withSection(details, 'Copies', template.copies, copyTable);
}

/**
 * The shared tail of every asynchronous template command: print the job at once with --no-wait,
 * otherwise follow it and show the template as it ended up.
 */
async function finishAsync(
  ctx: CommandContext,
  timeoutMs: number,
  accepted: TemplateAccepted,
  done: (template: Template) => string,
): Promise<number> {
  const what = {
    key: 'template',
    noun: 'Template',
    entity: accepted.template,
    refetch: (id: string) => ctx.client.getTemplate(id),
  };
  return finishAccepted(ctx, timeoutMs, accepted, what, done);
}

const PLACEMENT_OPTIONS: Record<string, OptionSpec> = {
  zone: {
    type: 'string',
    valueName: '<zoneId>',
    description: 'zone whose image store takes it (default: chosen by the API)',
  },
  store: { type: 'string', valueName: '<storeId>', description: 'this image store (instead of --zone)' },
};

const TYPE_OPTION: OptionSpec = {
  type: 'string',
  valueName: '<type>',
  description: 'template or iso (default: iso for --format iso, else template)',
};

/**
 * With a global --idempotency-key, every mutating request of this client would carry the same key,
 * which the API would take for repeats of the first request. Each step of the upload gets its own
 * key derived from it instead, so that re-running the same command stays safe step by step.
 */
function stepKey(ctx: CommandContext, step: string): { idempotencyKey?: string } {
  const base = optString(ctx.values, 'idempotency-key');
  return base ? { idempotencyKey: `${base}.${step}` } : {};
}

interface UploadRun {
  file: string;
  sizeBytes: number;
  parallel: number;
  started: TemplateUploadStarted;
  signal: AbortSignal;
}

/** PUTs the parts and completes the upload; throws (with the upload still open) on any failure. */
async function sendAndComplete(
  ctx: CommandContext,
  run: UploadRun,
  mtimeMs: number,
): Promise<TemplateAccepted> {
  const { template, upload } = run.started;
  const parts = planParts(upload, run.sizeBytes);
  // ctx.now is the command's start (fixed in tests); the clock moves on from it.
  const startedAt = Date.now();
  const clock = () => ctx.now.getTime() + (Date.now() - startedAt);
  const progress = ctx.out.byteProgress('upload', run.sizeBytes);
  // Retries back off on the same schedule as job polling (which tests shorten).
  const poll = ctx.poll ?? DEFAULT_POLL;
  let completed: CompletedPart[];
  try {
    completed = await uploadParts({
      file: run.file,
      parts,
      concurrency: run.parallel,
      maxAttempts: PART_ATTEMPTS,
      retryDelayMs: (retry) => Math.min(poll.maxMs, poll.initialMs * poll.factor ** (retry - 1)),
      onBytes: (bytes) => progress.add(bytes),
      signal: run.signal,
      // Part URLs live an hour: fresh ones for the parts not uploaded yet, as they are needed.
      renew: async (partNumbers) => {
        const answer = await ctx.client.renewTemplateUploadParts(template.id, upload.uploadId, partNumbers);
        return {
          parts: answer.parts.flatMap((p) => (p.url ? [{ partNumber: p.partNumber, url: p.url }] : [])),
          expiresAt: answer.expiresAt,
        };
      },
      now: clock,
    });
  } finally {
    progress.finish();
  }
  // The checksum was taken before the upload; a file rewritten meanwhile would fail verification
  // server-side after a long wait, or worse pass with mixed content if no checksum was sent.
  const after = await stat(run.file);
  if (after.size !== run.sizeBytes || after.mtimeMs !== mtimeMs) {
    throw new UploadError(`${run.file} changed while it was being uploaded`);
  }
  // Ctrl-C right after the last part must still abort rather than commit the upload.
  if (run.signal.aborted) throw run.signal.reason;
  return ctx.client.completeTemplateUpload(template.id, upload.uploadId, completed, stepKey(ctx, 'complete'));
}

/** Best effort: says what became of the upload, for the error report. */
async function abortUpload(ctx: CommandContext, started: TemplateUploadStarted): Promise<string> {
  const { template, upload } = started;
  try {
    await ctx.client.abortTemplateUpload(template.id, upload.uploadId, stepKey(ctx, 'abort'));
    return `upload ${upload.uploadId} of template ${template.id} was aborted; run the command again to retry`;
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    return (
      `aborting upload ${upload.uploadId} of template ${template.id} failed too (${reason}); ` +
      `the store discards it when it expires (${upload.expiresAt})`
    );
  }
}

/** Ctrl-C aborts the upload instead of leaving its parts behind, for as long as `body` runs. */
async function withInterrupt<T>(body: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onInterrupt = () => controller.abort(new UploadInterruptedError());
  // `once`: a second Ctrl-C gets the default behaviour and ends the process at once.
  process.once('SIGINT', onInterrupt);
  try {
    return await body(controller.signal);
  } finally {
    process.removeListener('SIGINT', onInterrupt);
  }
}

export const templateCommands: CommandSpec[] = [
  {
    path: ['templates', 'list'],
    summary: 'List templates and ISOs.',
    options: {
      name: { type: 'string', valueName: '<name>', description: 'only templates with this name' },
      type: { type: 'string', valueName: '<type>', description: 'template or iso' },
      state: { type: 'string', valueName: '<status>', description: 'e.g. Ready, Downloading, Error' },
      zone: { type: 'string', valueName: '<zoneId>', description: 'only templates in this zone' },
      ...PAGE_OPTIONS,
    },
    examples: ['strata templates list --type iso', 'strata templates list --state Error -q'],
    async run(ctx) {
      const command = 'templates list';
      const filters = {
        name: optString(ctx.values, 'name'),
        type: parseFlag(ctx.values, 'type', command, parseType),
        state: optString(ctx.values, 'state'),
        zoneId: optString(ctx.values, 'zone'),
      };
      const page = await fetchList(ctx, command, filters, (q) => ctx.client.listTemplates(q));
      printList(ctx, page, 'templates', templateTable, (t) => t.id);
      return ExitCode.Ok;
    },
  },
  {
    path: ['templates', 'get'],
    summary: 'Show one template and each of its copies on the image stores.',
    args: ['id'],
    async run(ctx) {
      const template = await ctx.client.getTemplate(ctx.args[0]!);
      printResult(ctx, template, template.id, () => templateDetails(template, ctx.now));
      return ExitCode.Ok;
    },
  },
  {
    path: ['templates', 'register'],
    summary: 'Register a template from a URL; the image store downloads it.',
    usage: '--name <name> --url <url> --format <format> [--type template|iso] [options]',
    options: {
      name: { type: 'string', valueName: '<name>', description: 'display name' },
      url: { type: 'string', valueName: '<url>', description: 'where the image store downloads it from' },
      format: { type: 'string', valueName: '<format>', description: FORMATS.join(', ') },
      type: TYPE_OPTION,
      checksum: {
        type: 'string',
        valueName: '<sha256>',
        description: 'expected checksum: {sha256}<hex> or the hex alone',
      },
      ...PLACEMENT_OPTIONS,
      ...WAIT_OPTIONS,
    },
    examples: [
      'strata templates register --name debian-12 --format qcow2 --zone zone-1 \\',
      '    --url https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-generic-amd64.qcow2',
    ],
    async run(ctx) {
      const command = 'templates register';
      const { values } = ctx;
      const format = requireFlag(values, 'format', command, parseFormat);
      const checksum = parseFlag(values, 'checksum', command, parseChecksum);
      const request: NewTemplate = {
        name: requireString(values, 'name', command),
        url: requireFlag(values, 'url', command, parseUrl),
        format,
        type: typeFor(ctx, command, format),
        ...(checksum ? { checksum } : {}),
        ...placement(ctx, command),
      };
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await ctx.client.registerTemplate(request);
      return finishAsync(
        ctx,
        timeoutMs,
        accepted,
        (t) => `Registered template ${t.name} (${t.id}), status ${t.status}.`,
      );
    },
  },
  {
    path: ['templates', 'upload'],
    summary: 'Upload a local image file as a template, in parallel parts, and wait for its verification.',
    args: ['file'],
    usage: '<file> --name <name> [--format <format>] [--type template|iso] [options]',
    options: {
      name: { type: 'string', valueName: '<name>', description: 'display name' },
      format: {
        type: 'string',
        valueName: '<format>',
        description: `${FORMATS.join(', ')} (default: from the file extension)`,
      },
      type: TYPE_OPTION,
      checksum: {
        type: 'string',
        valueName: '<sha256>',
        description: "the file's sha256, known already (skips reading the file twice)",
      },
      'no-checksum': {
        type: 'boolean',
        description: 'send no checksum (the server cannot verify the bytes)',
      },
      ...PLACEMENT_OPTIONS,
      parallel: {
        type: 'string',
        valueName: '<n>',
        description: `parts uploaded at once (default ${DEFAULT_PARALLEL})`,
      },
      ...WAIT_OPTIONS,
    },
    examples: [
      'strata templates upload ./debian-12.qcow2 --name debian-12 --zone zone-1',
      'strata templates upload ./disk.bin --name win-2022 --format vhd --store st-9 --parallel 8',
    ],
    async run(ctx) {
      const command = 'templates upload';
      const { values, out } = ctx;
      const file = ctx.args[0]!;
      const name = requireString(values, 'name', command);
      const given = parseFlag(values, 'checksum', command, parseChecksum);
      const noChecksum = optFlag(values, 'no-checksum');
      if (given && noChecksum)
        throw new UsageError('--checksum and --no-checksum contradict each other', command);
      const where = placement(ctx, command);
      const parallel = parseFlag(values, 'parallel', command, parseParallel) ?? DEFAULT_PARALLEL;
      const timeoutMs = waitTimeout(ctx, command);
      let info: Awaited<ReturnType<typeof stat>>;
      try {
        info = await stat(file);
      } catch (error) {
        throw new UsageError(
          `cannot read '${file}': ${(error as NodeJS.ErrnoException).code ?? error}`,
          command,
        );
      }
      if (!info.isFile()) throw new UsageError(`'${file}' is not a regular file`, command);
      if (info.size === 0) throw new UsageError(`'${file}' is empty`, command);
      const format =
        parseFlag(values, 'format', command, parseFormat) ?? (await formatFromFile(file, command));
      const sizeBytes = Number(info.size);

      // One sequential pass for the checksum before any byte is sent. Hashing the parts as they are
      // read would save that pass, but parts go out in parallel and out of order, and a retried part is
      // read twice, so the hash would need the parts re-ordered in memory: a second read is simpler
      // and costs no memory. --checksum (known already) or --no-checksum skip it.
      let checksum = given;
      if (!checksum && !noChecksum) {
        const hashing = out.byteProgress('sha256', sizeBytes);
        try {
          checksum = `{sha256}${await sha256File(file, (bytes) => hashing.add(bytes))}`;
        } catch (error) {
          if (error instanceof UploadError) {
            out.error(`Error: ${error.message}`);
            return ExitCode.Failure;
          }
          throw error;
        } finally {
          hashing.finish();
        }
      }

      const request: NewTemplateUpload = {
        name,
        format,
        type: typeFor(ctx, command, format),
        sizeBytes,
        ...(checksum ? { checksum } : {}),
        ...where,
      };
      const started = await ctx.client.startTemplateUpload(request);
      const { template, upload } = started;
      out.note(
        `Uploading ${formatBytes(sizeBytes)} to store ${upload.storeId} in ${upload.parts?.length ?? 0} part(s) ` +
          `for template ${template.name} (${template.id}).`,
      );
      let accepted: TemplateAccepted;
      try {
        accepted = await withInterrupt((signal) =>
          sendAndComplete(ctx, { file, sizeBytes, parallel, started, signal }, info.mtimeMs),
        );
      } catch (error) {
        // Nothing may be left half-written on the store: abort, then report.
        const fate = await abortUpload(ctx, started);
        if (error instanceof UploadInterruptedError) {
          out.error(`Interrupted: ${fate.replace(/; run the command again to retry$/, '')}.`);
          return EXIT_INTERRUPTED;
        }
        if (error instanceof UploadError) {
          out.error(`Error: ${error.message}`);
          if (error instanceof PartUploadError && error.status === 403) {
            out.error(`Hint: the part URLs may have expired (at ${upload.expiresAt}); ${fate}`);
          } else out.error(`Hint: ${fate}`);
          return ExitCode.Failure;
        }
        if (error instanceof Error) addHint(error, fate);
        throw error;
      }
      return finishAsync(
        ctx,
        timeoutMs,
        accepted,
        (t) => `Uploaded template ${t.name} (${t.id}), status ${t.status}.`,
      );
    },
  },
  {
    path: ['templates', 'copy'],
    summary: 'Copy a template onto another image store.',
    args: ['id'],
    usage: '<id> --store <storeId> [options]',
    options: {
      store: { type: 'string', valueName: '<storeId>', description: 'the image store to copy it to' },
      ...WAIT_OPTIONS,
    },
    examples: ['strata templates copy tpl-123 --store st-9'],
    async run(ctx) {
      const command = 'templates copy';
      const storeId = requireString(ctx.values, 'store', command);
      const timeoutMs = waitTimeout(ctx, command);
      const accepted = await ctx.client.copyTemplate(ctx.args[0]!, storeId);
      return finishAsync(ctx, timeoutMs, accepted, (t) => {
        const copy = t.copies?.find((c) => c.storeId === storeId);
        return `Template ${t.name} (${t.id}): copy on store ${storeId} is ${copy?.status ?? 'unknown'}.`;
      });
    },
  },
  {
    path: ['templates', 'delete'],
    summary: 'Delete a template and its copies (refused while volumes use it).',
    args: ['id'],
    async run(ctx) {
      const id = ctx.args[0]!;
      await withHint(
        () => ctx.client.deleteTemplate(id),
        (error) =>
          error.status === 409 && error.extra['dependents'] !== undefined
            ? 'the volumes listed under dependents still use it; delete them first'
            : undefined,
      );
      printResult(ctx, { id, deleted: true }, id, `Deleted template ${id}.`);
      return ExitCode.Ok;
    },
  },
];
