import { allPages } from '../../../functions/core/paging';

describe('allPages', () => {
  it('follows the cursor past short and empty pages to the end', async () => {
    const pages = [{ items: [1], cursor: 'a' }, { items: [], cursor: 'b' }, { items: [2, 3] }];
    const seen: (string | undefined)[] = [];
    const items = await allPages(async (cursor) => {
      seen.push(cursor);
      return pages[seen.length - 1]!;
    });
    expect(items).toEqual([1, 2, 3]);
    expect(seen).toEqual([undefined, 'a', 'b']);
  });
});
