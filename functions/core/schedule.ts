/**
 * Snapshot-policy schedules in EventBridge Scheduler syntax, checked once here and read the same way
 * by both stacks: on AWS the expression goes to Scheduler as it is; in the embedded stack
 * {@link nextFireTime} computes the firings (cron-parser for cron, fixed intervals for rate).
 *
 * Accepted:
 * - `cron(minutes hours day-of-month month day-of-week year)`: six fields; exactly one of
 *   day-of-month and day-of-week is `?`; day-of-week counts 1–7 from Sunday (or SUN–SAT); `L` (last
 *   day of the month; `L` or `<d>L` in day-of-week) and `<d>#<n>` (n-th weekday) as whole fields.
 *   `W` (nearest weekday) is refused: the embedded scheduler could not honour it.
 * - `rate(<n> minute|minutes|hour|hours|day|days)`, n ≥ 1, singular exactly when n is 1 (as
 *   Scheduler requires).
 */
import { CronExpressionParser } from 'cron-parser';
import { InputError } from './errors.js';

export interface CronSchedule {
  kind: 'cron';
  /** The normalised expression, as stored and sent to Scheduler. */
  expression: string;
  /** The same schedule in cron-parser's syntax (seconds first, Sunday = 0, no `?`, no year). */
  parserExpression: string;
  /** The years it may fire in; undefined for `*`. */
  years?: ReadonlySet<number>;
}

export interface RateSchedule {
  kind: 'rate';
  expression: string;
  intervalMs: number;
}

export type Schedule = CronSchedule | RateSchedule;

const MONTHS = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
const DAYS = ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
const MIN_YEAR = 1970;
const MAX_YEAR = 2199;
const RATE_UNITS: Record<string, number> = { minute: 60_000, hour: 3_600_000, day: 86_400_000 };

interface FieldSpec {
  name: string;
  min: number;
  max: number;
  /** Names for the values min, min+1, … (months, weekdays). */
  names?: readonly string[];
}

const FIELDS = {
  minutes: { name: 'minutes', min: 0, max: 59 },
  hours: { name: 'hours', min: 0, max: 23 },
  dayOfMonth: { name: 'day-of-month', min: 1, max: 31 },
  month: { name: 'month', min: 1, max: 12, names: MONTHS },
  dayOfWeek: { name: 'day-of-week', min: 1, max: 7, names: DAYS },
  year: { name: 'year', min: MIN_YEAR, max: MAX_YEAR },
} satisfies Record<string, FieldSpec>;

function invalid(message: string): InputError {
  return new InputError(`schedule: ${message}`, { field: 'schedule' });
}

/**
 * Parses and checks a schedule expression; throws an InputError naming `schedule` with the reason.
 *
 * @example
 * parseSchedule('cron(0 3 * * ? *)'); // every day at 03:00 in the policy's time zone
 * parseSchedule('rate(6 hours)');
 */
export function parseSchedule(input: string): Schedule {
  const text = input.trim();
  const rate = /^rate\((.*)\)$/.exec(text);
  if (rate) return parseRate(rate[1]!);
  const cron = /^cron\((.*)\)$/.exec(text);
  if (cron) return parseCron(cron[1]!);
  throw invalid('expected cron(<6 fields>) or rate(<n> <minute(s)|hour(s)|day(s)>)');
}

function parseRate(body: string): RateSchedule {
  const m = /^\s*(\d{1,6})\s+(minute|minutes|hour|hours|day|days)\s*$/.exec(body);
  if (!m) throw invalid('rate takes a whole number and minute(s), hour(s) or day(s), e.g. rate(6 hours)');
  const value = Number(m[1]);
  const unit = m[2]!;
  if (value < 1) throw invalid('the rate must be at least 1');
  const singular = !unit.endsWith('s');
  if (singular !== (value === 1)) {
    throw invalid(`write rate(1 ${unit.replace(/s$/, '')}) or rate(${value} ${unit.replace(/s?$/, 's')})`);
  }
  return {
    kind: 'rate',
    expression: `rate(${value} ${unit})`,
    intervalMs: value * RATE_UNITS[unit.replace(/s$/, '')]!,
  };
}

function parseCron(body: string): CronSchedule {
  const fields = body.trim().split(/\s+/);
  if (fields.length !== 6) {
    throw invalid(
      `cron takes 6 fields (minutes hours day-of-month month day-of-week year), got ${fields.length}`,
    );
  }
  const [minutes, hours, dom, month, dow, year] = fields.map((f) => f.toUpperCase()) as [
    string,
    string,
    string,
    string,
    string,
    string,
  ];
  if ((dom === '?') === (dow === '?')) {
    throw invalid('exactly one of day-of-month and day-of-week must be ?');
  }
  const parserFields = [
    '0',
    listField(minutes, FIELDS.minutes),
    listField(hours, FIELDS.hours),
    dom === '?' ? '*' : dom === 'L' ? 'L' : listField(dom, FIELDS.dayOfMonth),
    listField(month, FIELDS.month),
    dow === '?' ? '*' : dayOfWeekField(dow),
  ];
  const yearValues = year === '*' ? undefined : expand(year, FIELDS.year);
  const parserExpression = parserFields.join(' ');
  try {
    CronExpressionParser.parse(parserExpression, { tz: 'UTC', strict: false });
  } catch (e) {
    throw invalid(`cron(${fields.join(' ')}) ${(e as Error).message}`);
  }
  return {
    kind: 'cron',
    expression: `cron(${[minutes, hours, dom, month, dow, year].join(' ')})`,
    parserExpression,
    ...(yearValues ? { years: yearValues } : {}),
  };
}

function value(token: string, spec: FieldSpec): number {
  if (/^\d{1,4}$/.test(token)) {
    const n = Number(token);
    if (n < spec.min || n > spec.max) throw invalid(`${spec.name} ${n} is outside ${spec.min}-${spec.max}`);
    return n;
  }
  const index = spec.names?.indexOf(token) ?? -1;
  if (index < 0) throw invalid(`${spec.name} has an unknown value ${JSON.stringify(token)}`);
  return spec.min + index;
}

interface Part {
  /** undefined for `*` */
  from?: number;
  to?: number;
  step?: number;
}

/** `*`, `a`, `a-b`, each with an optional `/step`, separated by commas. */
function parts(field: string, spec: FieldSpec): Part[] {
  if (field.includes('W')) throw invalid(`${spec.name}: W (nearest weekday) is not supported`);
  return field.split(',').map((part) => {
    const m = /^(\*|[A-Z0-9]+(?:-[A-Z0-9]+)?)(?:\/(\d{1,4}))?$/.exec(part);
    if (!m) throw invalid(`${spec.name} has an invalid part ${JSON.stringify(part)}`);
    const step = m[2] === undefined ? undefined : Number(m[2]);
    if (step !== undefined && (step < 1 || step > spec.max)) {
      throw invalid(`${spec.name} step ${step} must be between 1 and ${spec.max}`);
    }
    if (m[1] === '*') return { step };
    const [a, b] = m[1]!.split('-') as [string, string | undefined];
    const from = value(a, spec);
    const to = b === undefined ? undefined : value(b, spec);
    if (to !== undefined && to < from) throw invalid(`${spec.name} range ${part} runs backwards`);
    return { from, to, step };
  });
}

function render(part: Part, shift = 0): string {
  let base = '*';
  if (part.from !== undefined) {
    base = String(part.from + shift);
    if (part.to !== undefined) base += `-${part.to + shift}`;
  }
  return part.step === undefined ? base : `${base}/${part.step}`;
}

function listField(field: string, spec: FieldSpec): string {
  return parts(field, spec)
    .map((p) => render(p))
    .join(',');
}

/** EventBridge counts 1 (SUN) – 7 (SAT); cron-parser 0 (SUN) – 6 (SAT). */
function dayOfWeekField(field: string): string {
  const spec = FIELDS.dayOfWeek;
  if (field === 'L') return '6';
  const last = /^([A-Z0-9]+)L$/.exec(field);
  if (last) return `${value(last[1]!, spec) - 1}L`;
  const nth = /^([A-Z0-9]+)#(\d)$/.exec(field);
  if (nth) {
    const n = Number(nth[2]);
    if (n < 1 || n > 5) throw invalid(`day-of-week #${n} must be between 1 and 5`);
    return `${value(nth[1]!, spec) - 1}#${n}`;
  }
  if (/[L#]/.test(field)) throw invalid('day-of-week L and # stand alone (e.g. 6L, 2#1)');
  return parts(field, spec)
    .map((p) => render(p, -1))
    .join(',');
}

function expand(field: string, spec: FieldSpec): Set<number> {
  const out = new Set<number>();
  for (const part of parts(field, spec)) {
    const from = part.from ?? spec.min;
    const to = part.to ?? (part.step !== undefined || part.from === undefined ? spec.max : part.from);
    for (let n = from; n <= to; n += part.step ?? 1) out.add(n);
  }
  return out;
}

/**
 * The IANA zone in the form Intl knows it (e.g. `utc` → `UTC`); throws an InputError naming
 * `timeZone` for a zone Intl does not know.
 */
export function checkTimeZone(timeZone: string): string {
  try {
    return new Intl.DateTimeFormat('en-US', { timeZone }).resolvedOptions().timeZone;
  } catch {
    throw new InputError(`timeZone: ${JSON.stringify(timeZone)} is not an IANA time zone`, {
      field: 'timeZone',
    });
  }
}

function yearIn(date: Date, timeZone: string): number {
  return Number(new Intl.DateTimeFormat('en-US', { timeZone, year: 'numeric' }).format(date));
}

export interface NextFireOptions {
  /** The result is strictly later than this. */
  after: Date;
  /** IANA zone the cron fields are read in (rate ignores it). */
  timeZone: string;
  /** Rate schedules fire at anchor + k × interval (the policy's creation); default `after`. */
  anchor?: Date;
}

/**
 * When a schedule fires next, strictly after `options.after`; undefined when it never will (a cron
 * whose years are past).
 *
 * @example
 * nextFireTime(parseSchedule('cron(0 3 * * ? *)'), {
 *   after: new Date('2024-06-01T12:00:00Z'),
 *   timeZone: 'Europe/Paris',
 * }); // 2024-06-02T01:00:00.000Z (03:00 in Paris, summer time)
 */
export function nextFireTime(schedule: Schedule, options: NextFireOptions): Date | undefined {
  const after = options.after.getTime();
  if (schedule.kind === 'rate') {
    const anchor = Math.min(options.anchor?.getTime() ?? after, after);
    const k = Math.floor((after - anchor) / schedule.intervalMs) + 1;
    return new Date(anchor + k * schedule.intervalMs);
  }
  const years = schedule.years;
  const lastYear = years ? Math.max(...years) : undefined;
  let from = new Date(after);
  // Each round moves forward, either to a firing or to the eve of the next allowed year.
  for (let round = 0; round < 10_000; round++) {
    const next = CronExpressionParser.parse(schedule.parserExpression, {
      currentDate: from,
      tz: options.timeZone,
    })
      .next()
      .toDate();
    if (!years) return next;
    const year = yearIn(next, options.timeZone);
    if (years.has(year)) return next;
    if (lastYear === undefined || year > lastYear) return undefined;
    let nextYear = year + 1;
    while (!years.has(nextYear)) nextYear++;
    // 31 Dec 00:00 UTC of the year before is before 1 Jan 00:00 local in every zone (UTC-12..+14).
    from = new Date(Math.max(next.getTime(), Date.UTC(nextYear - 1, 11, 31)));
  }
  return undefined;
}

/** A policy slot: the scheduled time truncated to the minute, as ISO-8601 UTC. */
export function slotOf(time: Date | string): string {
  const ms = new Date(time).getTime();
  if (Number.isNaN(ms))
    throw new InputError(`scheduledTime: not a time: ${String(time)}`, { field: 'scheduledTime' });
  return new Date(Math.floor(ms / 60_000) * 60_000).toISOString();
}
