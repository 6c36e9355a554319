import { randomUUID } from 'node:crypto';

/** A new entity id: a short type prefix and a random UUID (`store-…`, `job-…`). */
export function newId(prefix: string): string {
  return `${prefix}-${randomUUID()}`;
}
