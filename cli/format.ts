/**
 * Human output: aligned tables, sizes, durations and relative times. `--json` bypasses all of it.
 */

const BINARY_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'] as const;

/** 10737418240 → "10.0 GiB"; below 1 KiB the exact byte count. */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return '-';
  const sign = bytes < 0 ? '-' : '';
  let value = Math.abs(bytes);
  if (value < 1024) return `${sign}${value} B`;
  let unit = 0;
  while (value >= 1024 && unit < BINARY_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  // 1023.96 would print as "1024.0 KiB"; step up instead.
  if (Number(value.toFixed(1)) >= 1024 && unit < BINARY_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${sign}${value.toFixed(1)} ${BINARY_UNITS[unit]}`;
}

// Bare letters follow qemu-img and CloudStack: binary multiples. Only the explicit SI spellings
// (KB, MB, GB…) are decimal, so that "10G" and "10GiB" mean the same disk.
const SIZE_MULTIPLIERS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 2 ** 10,
  kib: 2 ** 10,
  m: 2 ** 20,
  mib: 2 ** 20,
  g: 2 ** 30,
  gib: 2 ** 30,
  t: 2 ** 40,
  tib: 2 ** 40,
  p: 2 ** 50,
  pib: 2 ** 50,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  pb: 1e15,
};

export class InvalidValueError extends Error {
  override readonly name = 'InvalidValueError';
}

/** "10G", "10GiB", "512MiB", "1.5T", "4096" → bytes. */
export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const multiplier = match ? SIZE_MULTIPLIERS[match[2]!.toLowerCase()] : undefined;
  if (!match || multiplier === undefined) {
    throw new InvalidValueError(`'${text}' is not a size (examples: 4096, 512MiB, 10G, 1.5TiB, 100GB)`);
  }
  const bytes = Number(match[1]) * multiplier;
  if (!Number.isInteger(bytes)) throw new InvalidValueError(`'${text}' is not a whole number of bytes`);
  if (!Number.isSafeInteger(bytes)) throw new InvalidValueError(`'${text}' is too large`);
  return bytes;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** "90s", "5m", "1h", "250ms", or plain seconds → milliseconds. */
export function parseDuration(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/i.exec(text);
  if (!match)
    throw new InvalidValueError(`'${text}' is not a duration (examples: 30s, 10m, 1h, 0 for no limit)`);
  return Math.round(Number(match[1]) * DURATION_UNITS[(match[2] ?? 's').toLowerCase()]!);
}

/** 95_000 → "1m35s". */
export function formatDuration(ms: number): string {
  const seconds = Math.max(0, Math.round(ms / 1000));
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${pad2(seconds % 60)}s`;
  return `${Math.floor(minutes / 60)}h${pad2(minutes % 60)}m`;
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

/** How long ago `iso` was, compactly: "just now", "42s ago", "5m ago", "3h ago", "12d ago". */
export function relativeTime(iso: string | undefined, now: Date): string {
  if (!iso) return '-';
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return iso;
  const seconds = Math.round((now.getTime() - then) / 1000);
  if (seconds < 0) return 'in the future';
  if (seconds < 5) return 'just now';
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86_400)}d ago`;
}

/** A moment in a details view: how long ago, then exactly: "1h ago (2025-06-01T11:00:00.000Z)". */
export function timestamp(iso: string, now: Date): string {
  return `${relativeTime(iso, now)} (${iso})`;
}

/** The value, or "-" when it is missing or empty, so that no cell or details line is left blank. */
export function orDash(value: string | undefined): string {
  return value || '-';
}

/** A size, or "-" when it is not known. */
export function bytesOrDash(bytes: number | undefined): string {
  return bytes === undefined ? '-' : formatBytes(bytes);
}

/** A size with its exact byte count, "10.0 GiB (10737418240 bytes)", for sizes compared to the byte. */
export function exactBytes(bytes: number): string {
  return `${formatBytes(bytes)} (${bytes} bytes)`;
}

/** "20%" of a whole; "-" when the whole is unknown. */
export function percent(part: number, whole: number): string {
  if (!whole || !Number.isFinite(part)) return '-';
  return `${Math.round((part / whole) * 100)}%`;
}

export interface Column<T> {
  header: string;
  value: (row: T) => string;
  /** Numbers and sizes read better right-aligned. */
  align?: 'left' | 'right';
}

/** An aligned plain-text table, two spaces between columns, no trailing blanks. */
export function renderTable<T>(rows: readonly T[], columns: readonly Column<T>[]): string {
  const cells = rows.map((row) => columns.map((column) => clean(column.value(row))));
  const widths = columns.map((column, i) =>
    Math.max(column.header.length, ...cells.map((line) => displayWidth(line[i]!))),
  );
  const renderLine = (line: readonly string[]) =>
    line
      .map((cell, i) => {
        const gap = ' '.repeat(widths[i]! - displayWidth(cell));
        return columns[i]!.align === 'right' ? gap + cell : cell + gap;
      })
      .join('  ')
      .trimEnd();
  return [renderLine(columns.map((column) => column.header)), ...cells.map((line) => renderLine(line))].join(
    '\n',
  );
}

/** Label/value pairs with the values lined up; pairs whose value is undefined are left out. */
export function renderDetails(pairs: ReadonlyArray<readonly [string, string | undefined]>): string {
  const shown = pairs.filter((pair): pair is readonly [string, string] => pair[1] !== undefined);
  const width = Math.max(0, ...shown.map(([label]) => label.length));
  return shown.map(([label, value]) => `${label.padEnd(width)}  ${clean(value)}`.trimEnd()).join('\n');
}

/**
 * Details followed by a titled table of related rows (a template's or a snapshot's copies), or by
 * `(none)` when there are no rows.
 */
export function withSection<T>(
  details: string,
  title: string,
  rows: T[] | undefined,
  table: (rows: T[]) => string,
): string {
  const shown = rows ?? [];
  return `${details}\n\n${title}:\n${shown.length ? table(shown) : '(none)'}`;
}

// Names and reasons come from the API; keep a stray newline or escape sequence from breaking the layout.
function clean(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping control characters is the point
  return text.replace(/[\u0000-\u001f\u007f]+/g, ' ');
}

function displayWidth(text: string): number {
  return [...text].length;
}

/** A job's state as a person reads it: "running 45%", "succeeded", "failed: NO_HOST". */
export function jobStateLabel(job: { state: string; progress: number; error?: { code: string } }): string {
  switch (job.state) {
    case 'running':
      return `running ${Math.round(job.progress)}%`;
    case 'failed':
      return job.error ? `failed: ${job.error.code}` : 'failed';
    default:
      return job.state;
  }
}

const SECRET_KEY = /secret|password|passwd|token|credential|private/i;

/** Provider details for display, with anything that looks like a secret masked. */
export function formatDetails(details: Record<string, string>): string {
  const entries = Object.entries(details);
  if (entries.length === 0) return '-';
  return entries.map(([key, value]) => `${key}=${SECRET_KEY.test(key) ? '****' : value}`).join(' ');
}
