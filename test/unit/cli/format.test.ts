import {
  bytesOrDash,
  exactBytes,
  formatBytes,
  formatDuration,
  jobStateLabel,
  orDash,
  parseDuration,
  parseSize,
  relativeTime,
  renderDetails,
  renderTable,
  timestamp,
  withSection,
} from '../../../cli/format.js';

describe('parseSize', () => {
  it.each([
    ['4096', 4096],
    ['0', 0],
    ['512MiB', 512 * 2 ** 20],
    ['512M', 512 * 2 ** 20],
    ['10G', 10 * 2 ** 30],
    ['10GiB', 10 * 2 ** 30],
    ['10 gib', 10 * 2 ** 30],
    ['1.5T', 1.5 * 2 ** 40],
    ['2TiB', 2 * 2 ** 40],
    ['100GB', 100e9],
    ['1KB', 1000],
    ['64k', 65_536],
    ['7B', 7],
  ])('%s → %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(['', 'ten', '10X', '-1G', '1.1B', '0.1K', '10 G B', '9999999P'])('rejects %j', (text) => {
    expect(() => parseSize(text)).toThrow(/size|whole number|too large/);
  });
});

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1024, '1.0 KiB'],
    [1536, '1.5 KiB'],
    [10 * 2 ** 30, '10.0 GiB'],
    [2 ** 40 - 1, '1.0 TiB'],
    [3.25 * 2 ** 50, '3.3 PiB'],
  ])('%d → %s', (bytes, text) => {
    expect(formatBytes(bytes)).toBe(text);
  });

  it('round-trips with parseSize', () => {
    expect(formatBytes(parseSize('10GiB'))).toBe('10.0 GiB');
  });
});

describe('parseDuration / formatDuration', () => {
  it.each([
    ['30', 30_000],
    ['30s', 30_000],
    ['250ms', 250],
    ['10m', 600_000],
    ['1.5h', 5_400_000],
    ['0', 0],
  ])('%s → %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it('rejects nonsense', () => {
    expect(() => parseDuration('a while')).toThrow(/not a duration/);
  });

  it.each([
    [4_000, '4s'],
    [95_000, '1m35s'],
    [3_720_000, '1h02m'],
  ])('%d ms → %s', (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });
});

describe('relativeTime', () => {
  const now = new Date('2025-06-01T12:00:00Z');
  it.each([
    ['2025-06-01T11:59:58Z', 'just now'],
    ['2025-06-01T11:59:18Z', '42s ago'],
    ['2025-06-01T11:55:00Z', '5m ago'],
    ['2025-06-01T09:00:00Z', '3h ago'],
    ['2025-05-20T12:00:00Z', '12d ago'],
    ['2025-06-01T12:01:00Z', 'in the future'],
    [undefined, '-'],
    ['yesterday', 'yesterday'],
  ])('%s → %s', (iso, text) => {
    expect(relativeTime(iso, now)).toBe(text);
  });
});

describe('timestamp', () => {
  it('says how long ago, then the exact time', () => {
    expect(timestamp('2025-06-01T11:00:00.000Z', new Date('2025-06-01T12:00:00Z'))).toBe(
      '1h ago (2025-06-01T11:00:00.000Z)',
    );
  });
});

describe('orDash / bytesOrDash / exactBytes', () => {
  it.each([
    [undefined, '-'],
    ['', '-'],
    ['st-1', 'st-1'],
  ])('orDash(%j) → %s', (value, text) => {
    expect(orDash(value)).toBe(text);
  });

  it.each([
    [undefined, '-'],
    [0, '0 B'],
    [10 * 2 ** 30, '10.0 GiB'],
  ])('bytesOrDash(%j) → %s', (bytes, text) => {
    expect(bytesOrDash(bytes)).toBe(text);
  });

  it('exactBytes gives the byte count after the size', () => {
    expect(exactBytes(10 * 2 ** 30)).toBe('10.0 GiB (10737418240 bytes)');
  });
});

describe('withSection', () => {
  const table = (rows: string[]) => rows.join(',');

  it('puts the titled table under the details', () => {
    expect(withSection('ID  x', 'Copies', ['a', 'b'], table)).toBe('ID  x\n\nCopies:\na,b');
  });

  it.each([[undefined], [[]]])('says (none) for %j rows', (rows) => {
    expect(withSection('ID  x', 'Copies', rows, table)).toBe('ID  x\n\nCopies:\n(none)');
  });
});

describe('renderTable', () => {
  it('aligns columns, right-aligns where asked and trims trailing blanks', () => {
    const rows = [
      { name: 'a', size: '1.0 GiB', note: '' },
      { name: 'longer-name', size: '512 B', note: 'x' },
    ];

    const text = renderTable(rows, [
      { header: 'NAME', value: (r) => r.name },
      { header: 'SIZE', value: (r) => r.size, align: 'right' },
      { header: 'NOTE', value: (r) => r.note },
    ]);

    expect(text.split('\n')).toEqual([
      'NAME            SIZE  NOTE',
      'a            1.0 GiB',
      'longer-name    512 B  x',
    ]);
  });

  it('keeps control characters in API data from breaking the layout', () => {
    const text = renderTable([{ name: 'evil\nname\u001b[2J' }], [{ header: 'NAME', value: (r) => r.name }]);

    expect(text.split('\n')).toEqual(['NAME', 'evil name [2J']);
  });
});

describe('renderDetails', () => {
  it('lines up values and drops undefined ones', () => {
    expect(
      renderDetails([
        ['ID', 'st-1'],
        ['Reason', undefined],
        ['Capacity', '1.0 GiB'],
      ]),
    ).toBe('ID        st-1\nCapacity  1.0 GiB');
  });
});

describe('jobStateLabel', () => {
  it.each([
    [{ state: 'running', progress: 44.6 }, 'running 45%'],
    [{ state: 'failed', progress: 0, error: { code: 'NO_HOST' } }, 'failed: NO_HOST'],
    [{ state: 'pending', progress: 0 }, 'pending'],
  ])('%j → %s', (job, text) => {
    expect(jobStateLabel(job)).toBe(text);
  });
});
