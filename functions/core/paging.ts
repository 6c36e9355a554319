import type { Page } from './ports.js';

/**
 * Every item of a paginated listing. Listings filter after reading each page, so a page can be
 * short or empty while later pages still hold matches: a caller that wants all matches must follow
 * the cursor to the end.
 */
export async function allPages<T>(fetch: (cursor: string | undefined) => Promise<Page<T>>): Promise<T[]> {
  const items: T[] = [];
  let cursor: string | undefined;
  do {
    const page = await fetch(cursor);
    items.push(...page.items);
    cursor = page.cursor;
  } while (cursor);
  return items;
}
