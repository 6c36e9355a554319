import {
  RESTORE_PAGE_ENTRIES,
  restorePageKey,
  restorePages,
} from '../../../functions/core/services/backup-restore.js';
import { planKey } from '../../../functions/core/services/backup-store.js';

const sha = (n: number) => n.toString(16).padStart(64, '0');

describe('restore list pages', () => {
  it('pages the non-zero chunks in index order, 256 to a page, zero chunks in none', () => {
    // 700 chunk indexes, every seventh a zero chunk, and one hash used twice.
    const chunks = Array.from({ length: 700 }, (_, i) => (i % 7 === 3 ? null : sha(i === 650 ? 1 : i)));
    const urls = new Map(chunks.filter((c) => c !== null).map((c) => [c, `https://s3/x/${c}?sig`]));

    const pages = restorePages(chunks, urls);

    expect(RESTORE_PAGE_ENTRIES).toBe(256);
    expect(pages.map((p) => p.length)).toEqual([256, 256, 88]);
    const flat = pages.flat();
    expect(flat).toHaveLength(600);
    expect(flat.every((e, i) => i === 0 || e.index > flat[i - 1]!.index)).toBe(true);
    expect(flat.some((e) => e.index % 7 === 3)).toBe(false);
    expect(flat.find((e) => e.index === 650)).toEqual({ index: 650, sha256: sha(1), url: urls.get(sha(1)) });
  });

  it('has no page for a disk of zeros, and refuses a chunk it has no URL for', () => {
    expect(restorePages([null, null], new Map())).toEqual([]);
    expect(() => restorePages([sha(1)], new Map())).toThrow('no URL for chunk');
  });

  it('keeps pages next to the index, under the job plan prefix', () => {
    expect(planKey('job-1', 'restore')).toBe('backups/plans/job-1/restore.json');
    expect(restorePageKey('job-1', 3)).toBe('backups/plans/job-1/restore-3.json');
  });
});
