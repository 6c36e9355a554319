/**
 * Key design of the one table.
 *
 * | entity          | pk                  | sk             | by-type (gsi1)           | by-store (gsi2)               |
 * |-----------------|---------------------|----------------|--------------------------|-------------------------------|
 * | DataStore       | STORE#<id>          | META           | DataStore / createdAt#id |                               |
 * | Host            | HOST#<id>           | META           | Host / createdAt#id      |                               |
 * | Template        | TEMPLATE#<id>       | META           | Template / createdAt#id  |                               |
 * | TemplateInStore | TEMPLATE#<id>       | STORE#<store>  | … / createdAt#id#store   | STORE#<store> / Template…#id  |
 * | Volume          | VOLUME#<id>         | META           | Volume / createdAt#id    | STORE#<store> / Volume#id     |
 * | Snapshot        | SNAPSHOT#<id>       | META           | Snapshot / createdAt#id  |                               |
 * | SnapshotInStore | SNAPSHOT#<id>       | STORE#<store>  | … / createdAt#id#store   | STORE#<store> / Snapshot…#id  |
 * | SnapshotPolicy  | POLICY#<id>         | META           | SnapshotPolicy / …       |                               |
 * | Job             | JOB#<id>            | META           | Job / createdAt#id       |                               |
 * | Idempotency     | IDEMPOTENCY#<key>   | META           | (none)                   |                               |
 *
 * Access patterns:
 * - get one entity: GetItem(pk, sk).
 * - a template or snapshot with all its copies: Query(pk) (META first, then STORE#… rows).
 * - list entities of a type, oldest first, paginated: Query by-type(gsi1pk = type).
 * - everything a store holds (delete refusal, reconciler orphan check, capacity): Query by-store.
 * - expired leases for the reconciler: Query by-lease(leasePk = LEASE, leaseExpiresAt < now);
 *   the index is sparse, so it holds only entities in transitional states.
 * - idempotency replays: GetItem; DynamoDB TTL removes them.
 *
 * The by-type partitions are per type; at control-plane scale (thousands of entities, tens of
 * writes a second) that is well inside one partition's limits.
 */
import type { EntityMap, EntityType } from '../../core/model.js';
import type { EntityKey } from '../../core/ports.js';

const PK_PREFIX: Record<EntityType, string> = {
  DataStore: 'STORE',
  Host: 'HOST',
  Template: 'TEMPLATE',
  TemplateInStore: 'TEMPLATE',
  Volume: 'VOLUME',
  Snapshot: 'SNAPSHOT',
  SnapshotInStore: 'SNAPSHOT',
  SnapshotPolicy: 'POLICY',
  Job: 'JOB',
  Idempotency: 'IDEMPOTENCY',
};

/** Types whose rows live under another entity's partition, one per store. */
const PER_STORE: ReadonlySet<EntityType> = new Set(['TemplateInStore', 'SnapshotInStore']);

/** Fields stored as DynamoDB string sets (so members can be added and removed atomically). */
export const SET_FIELDS: Partial<Record<EntityType, readonly string[]>> = {
  Host: ['attachedStoreIds'],
  Volume: ['accessHostIds'],
};

export interface ItemKey {
  pk: string;
  sk: string;
}

export function itemKey(key: EntityKey): ItemKey {
  if (PER_STORE.has(key.type)) {
    if (!key.storeId) throw new Error(`${key.type} keys need a storeId`);
    return { pk: `${PK_PREFIX[key.type]}#${key.id}`, sk: `STORE#${key.storeId}` };
  }
  return { pk: `${PK_PREFIX[key.type]}#${key.id}`, sk: 'META' };
}

/** The key of an entity from its own fields. */
export function keyOf<T extends EntityType>(type: T, entity: Partial<EntityMap[T]>): EntityKey<T> {
  const e = entity as Record<string, unknown>;
  switch (type) {
    case 'TemplateInStore':
      return { type, id: String(e.templateId), storeId: String(e.storeId) };
    case 'SnapshotInStore':
      return { type, id: String(e.snapshotId), storeId: String(e.storeId) };
    case 'Idempotency':
      return { type, id: String(e.key) };
    default:
      return { type, id: String(e.id) };
  }
}

/** Index attributes an entity carries, derived from its fields. */
export function indexAttributes(type: EntityType, entity: Record<string, unknown>): Record<string, string> {
  const attrs: Record<string, string> = {};
  if (type === 'Idempotency') return attrs;
  const key = keyOf(type, entity);
  const idPart = key.storeId ? `${key.id}#${key.storeId}` : key.id;
  attrs.gsi1pk = type;
  attrs.gsi1sk = `${String(entity.createdAt)}#${idPart}`;
  const storeId = PER_STORE.has(type) ? key.storeId : type === 'Volume' ? entity.storeId : undefined;
  if (typeof storeId === 'string' && storeId) {
    attrs.gsi2pk = `STORE#${storeId}`;
    attrs.gsi2sk = `${type}#${key.id}`;
  }
  return attrs;
}

/** Every attribute the table adds to an entity (stripped when reading). */
export const INTERNAL_ATTRIBUTES = [
  'pk',
  'sk',
  'entityType',
  'gsi1pk',
  'gsi1sk',
  'gsi2pk',
  'gsi2sk',
  'leasePk',
  'leaseExpiresAt',
  'ttl',
] as const;
