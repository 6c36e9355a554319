import { InputError } from '../../../functions/core/errors.js';
import { checkTimeZone, nextFireTime, parseSchedule, slotOf } from '../../../functions/core/schedule.js';

function fieldOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(InputError);
    return (e as InputError).context.field;
  }
  return undefined;
}

/** The next `count` firings after `from`, as ISO strings. */
function firings(expression: string, from: string, timeZone = 'UTC', count = 3, anchor?: string): string[] {
  const schedule = parseSchedule(expression);
  const out: string[] = [];
  let after = new Date(from);
  for (let i = 0; i < count; i++) {
    const next = nextFireTime(schedule, { after, timeZone, anchor: anchor ? new Date(anchor) : undefined });
    if (!next) break;
    out.push(next.toISOString());
    after = next;
  }
  return out;
}

describe('parseSchedule', () => {
  it.each([
    ['cron(0 3 * * ? *)', 'cron(0 3 * * ? *)'],
    ['cron(0/15 * ? * MON-FRI *)', 'cron(0/15 * ? * MON-FRI *)'],
    ['  cron(0   12 L * ? 2030-2035) ', 'cron(0 12 L * ? 2030-2035)'],
    ['cron(30 1 ? jan,jul 6L *)', 'cron(30 1 ? JAN,JUL 6L *)'],
    ['cron(0 9 ? * 2#1 *)', 'cron(0 9 ? * 2#1 *)'],
    ['rate(1 minute)', 'rate(1 minute)'],
    ['rate(5 minutes)', 'rate(5 minutes)'],
    ['rate(12 hours)', 'rate(12 hours)'],
    ['rate(1 day)', 'rate(1 day)'],
  ])('accepts %s', (input, normalised) => {
    expect(parseSchedule(input).expression).toBe(normalised);
  });

  it.each([
    '',
    'daily',
    '0 3 * * *',
    'at(2030-01-01T00:00:00)',
    'cron(0 3 * * *)',
    'cron(0 3 * * ? * *)',
    'cron(0 3 * * MON *)',
    'cron(0 3 ? * ? *)',
    'cron(60 3 * * ? *)',
    'cron(0 24 * * ? *)',
    'cron(0 3 32 * ? *)',
    'cron(0 3 ? * 8 *)',
    'cron(0 3 ? * 0 *)',
    'cron(0 3 ? FOO * *)',
    'cron(0 3 15W * ? *)',
    'cron(0 3 * * ? 1969)',
    'cron(0 3 ? * 6L,2 *)',
    'cron(0 3 ? * 2#6 *)',
    'cron(0 5-3 * * ? *)',
    'cron(0/0 3 * * ? *)',
    'cron(H 3 * * ? *)',
    'cron(0 3 30 2 ? *)',
    'rate(0 minutes)',
    'rate(1 minutes)',
    'rate(5 minute)',
    'rate(5 weeks)',
    'rate(1.5 hours)',
    'rate(-1 hours)',
  ])('refuses %p, naming schedule', (input) => {
    expect(fieldOf(() => parseSchedule(input))).toBe('schedule');
  });
});

describe('checkTimeZone', () => {
  it('accepts IANA zones in their canonical spelling', () => {
    expect(checkTimeZone('Europe/Paris')).toBe('Europe/Paris');
    expect(checkTimeZone('utc')).toBe('UTC');
  });

  it.each(['Mars/Olympus', 'CEST+1', ''])('refuses %p, naming timeZone', (zone) => {
    expect(fieldOf(() => checkTimeZone(zone))).toBe('timeZone');
  });
});

describe('nextFireTime', () => {
  describe('cron', () => {
    it('fires daily at the local time of the zone, across a DST change', () => {
      // Paris moves from UTC+1 to UTC+2 on 2024-03-31.
      expect(firings('cron(0 3 * * ? *)', '2024-03-29T12:00:00Z', 'Europe/Paris')).toEqual([
        '2024-03-30T02:00:00.000Z',
        '2024-03-31T01:00:00.000Z',
        '2024-04-01T01:00:00.000Z',
      ]);
    });

    it('reads the same fields differently in another zone', () => {
      expect(firings('cron(0 3 * * ? *)', '2024-06-01T12:00:00Z', 'America/New_York', 1)).toEqual([
        '2024-06-02T07:00:00.000Z',
      ]);
    });

    it('counts day-of-week from Sunday = 1, as EventBridge does', () => {
      // 2024-06-03 is a Monday: MON = 2.
      expect(firings('cron(0 12 ? * 2 *)', '2024-06-01T00:00:00Z', 'UTC', 2)).toEqual([
        '2024-06-03T12:00:00.000Z',
        '2024-06-10T12:00:00.000Z',
      ]);
      expect(firings('cron(0 12 ? * MON-FRI *)', '2024-06-07T13:00:00Z', 'UTC', 2)).toEqual([
        '2024-06-10T12:00:00.000Z',
        '2024-06-11T12:00:00.000Z',
      ]);
      expect(firings('cron(0 12 ? * 1 *)', '2024-06-01T00:00:00Z', 'UTC', 1)).toEqual([
        '2024-06-02T12:00:00.000Z',
      ]);
    });

    it('understands last day, last weekday and n-th weekday', () => {
      expect(firings('cron(0 0 L * ? *)', '2024-02-10T00:00:00Z', 'UTC', 2)).toEqual([
        '2024-02-29T00:00:00.000Z',
        '2024-03-31T00:00:00.000Z',
      ]);
      // last Friday (6L) and first Monday (2#1) of June 2024
      expect(firings('cron(0 0 ? * 6L *)', '2024-06-01T00:00:00Z', 'UTC', 1)).toEqual([
        '2024-06-28T00:00:00.000Z',
      ]);
      expect(firings('cron(0 0 ? * 2#1 *)', '2024-06-01T00:00:00Z', 'UTC', 1)).toEqual([
        '2024-06-03T00:00:00.000Z',
      ]);
    });

    it('honours the year field, and knows when a schedule never fires again', () => {
      expect(firings('cron(0 0 1 1 ? 2026,2028)', '2024-06-01T00:00:00Z', 'Asia/Tokyo')).toEqual([
        '2025-12-31T15:00:00.000Z',
        '2027-12-31T15:00:00.000Z',
      ]);
      expect(
        nextFireTime(parseSchedule('cron(0 0 * * ? 2020)'), { after: new Date(), timeZone: 'UTC' }),
      ).toBe(undefined);
    });

    it('is strictly after the given time', () => {
      expect(firings('cron(0/15 * * * ? *)', '2024-06-01T10:15:00Z', 'UTC', 2)).toEqual([
        '2024-06-01T10:30:00.000Z',
        '2024-06-01T10:45:00.000Z',
      ]);
    });
  });

  describe('rate', () => {
    it('fires at whole intervals from the anchor (the policy creation)', () => {
      expect(firings('rate(6 hours)', '2024-06-01T13:00:00Z', 'UTC', 3, '2024-06-01T10:20:30Z')).toEqual([
        '2024-06-01T16:20:30.000Z',
        '2024-06-01T22:20:30.000Z',
        '2024-06-02T04:20:30.000Z',
      ]);
    });

    it('starts from now without an anchor, whatever the zone', () => {
      expect(firings('rate(1 minute)', '2024-06-01T13:00:10Z', 'Pacific/Auckland', 2)).toEqual([
        '2024-06-01T13:01:10.000Z',
        '2024-06-01T13:02:10.000Z',
      ]);
    });
  });
});

describe('slotOf', () => {
  it('truncates to the minute', () => {
    expect(slotOf('2024-06-01T03:00:42.123Z')).toBe('2024-06-01T03:00:00.000Z');
    expect(slotOf('2024-06-01T05:00:59+02:00')).toBe('2024-06-01T03:00:00.000Z');
  });

  it('refuses what is not a time', () => {
    expect(fieldOf(() => slotOf('yesterday'))).toBe('scheduledTime');
  });
});
