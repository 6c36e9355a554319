/**
 * The Repository port on DynamoDB (and DynamoDB Local in the embedded stack). Every write is
 * conditional; a failed condition is read back (ReturnValuesOnConditionCheckFailure) so the caller
 * learns whether the entity is missing (NotFoundError) or moved on (ConflictError with its state).
 */
import {
  ConditionalCheckFailedException,
  DynamoDBClient,
  type DynamoDBClientConfig,
  TransactionCanceledException,
} from '@aws-sdk/client-dynamodb';
import {
  DeleteCommand,
  DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  QueryCommand,
  type QueryCommandInput,
  TransactWriteCommand,
  type TransactWriteCommandInput,
  UpdateCommand,
} from '@aws-sdk/lib-dynamodb';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import { ConflictError, InputError, NotFoundError, UnavailableError } from '../../core/errors.js';
import type { EntityMap, EntityType, Lease } from '../../core/model.js';
import type {
  ChunkIndex,
  EntityKey,
  ListOptions,
  Page,
  Repository,
  StatusOf,
  TransitionRequest,
  WriteOp,
} from '../../core/ports.js';
import { type Clock, systemClock } from '../../core/ports.js';
import { assertTransition, canTransition } from '../../core/state-machines.js';
import { DynamoChunkIndex } from './dynamo-chunk-index.js';
import { INTERNAL_ATTRIBUTES, indexAttributes, itemKey, keyOf, SET_FIELDS } from './table-keys.js';
import { TableSchema } from './table-schema.js';

export interface DynamoRepositoryOptions {
  tableName: string;
  /** A ready document client; otherwise one is built from `clientConfig`. */
  client?: DynamoDBDocumentClient;
  clientConfig?: DynamoDBClientConfig;
  clock?: Clock;
}

type Item = Record<string, unknown>;

/** One conditional update: run alone by write(), or as one item of transact(). */
interface UpdateSpec {
  key: EntityKey;
  b: UpdateBuilder;
  condition: string;
  explain: (current: Item) => string;
}

/** Builds SET/REMOVE clauses with placeholder names so reserved words never matter. */
class UpdateBuilder {
  private readonly sets: string[] = [];
  private readonly removes: string[] = [];
  private readonly adds: string[] = [];
  private readonly deletes: string[] = [];
  readonly names: Record<string, string> = {};
  readonly values: Record<string, unknown> = {};
  private n = 0;

  name(attr: string): string {
    const key = `#${attr.replace(/[^A-Za-z0-9]/g, '_')}`;
    this.names[key] = attr;
    return key;
  }

  value(v: unknown): string {
    const key = `:v${this.n++}`;
    this.values[key] = v;
    return key;
  }

  set(attr: string, v: unknown): this {
    if (v === undefined) this.removes.push(this.name(attr));
    else this.sets.push(`${this.name(attr)} = ${this.value(v)}`);
    return this;
  }

  setExpression(expression: string): this {
    this.sets.push(expression);
    return this;
  }

  remove(attr: string): this {
    this.removes.push(this.name(attr));
    return this;
  }

  add(attr: string, v: unknown): this {
    this.adds.push(`${this.name(attr)} ${this.value(v)}`);
    return this;
  }

  delete(attr: string, v: unknown): this {
    this.deletes.push(`${this.name(attr)} ${this.value(v)}`);
    return this;
  }

  expression(): string {
    const parts: string[] = [];
    if (this.sets.length) parts.push(`SET ${this.sets.join(', ')}`);
    if (this.removes.length) parts.push(`REMOVE ${this.removes.join(', ')}`);
    if (this.adds.length) parts.push(`ADD ${this.adds.join(', ')}`);
    if (this.deletes.length) parts.push(`DELETE ${this.deletes.join(', ')}`);
    return parts.join(' ');
  }
}

const LEASE_PARTITION = 'LEASE';

export class DynamoRepository implements Repository {
  private readonly tableName: string;
  private readonly clock: Clock;
  private doc?: DynamoDBDocumentClient;
  private readonly clientConfig?: DynamoDBClientConfig;

  /** The backup chunk index, in the same table (see dynamo-chunk-index.ts). */
  readonly chunks: ChunkIndex;

  constructor(options: DynamoRepositoryOptions) {
    this.tableName = options.tableName;
    this.doc = options.client;
    this.clientConfig = options.clientConfig;
    this.clock = options.clock ?? systemClock;
    this.chunks = new DynamoChunkIndex({
      tableName: this.tableName,
      client: () => this.client,
      clock: this.clock,
    });
  }

  /** Built on first use, never at import time. */
  private get client(): DynamoDBDocumentClient {
    this.doc ??= DynamoDBDocumentClient.from(new DynamoDBClient(this.clientConfig ?? {}), {
      marshallOptions: { removeUndefinedValues: true },
    });
    return this.doc;
  }

  async get<T extends EntityType>(key: EntityKey<T>): Promise<EntityMap[T] | undefined> {
    const out = await this.client.send(
      new GetCommand({ TableName: this.tableName, Key: itemKey(key), ConsistentRead: true }),
    );
    return out.Item ? this.fromItem<T>(key.type, out.Item) : undefined;
  }

  async require<T extends EntityType>(key: EntityKey<T>): Promise<EntityMap[T]> {
    const found = await this.get(key);
    if (!found)
      throw new NotFoundError(`${key.type} ${describeKey(key)} not found`, { type: key.type, id: key.id });
    return found;
  }

  async create<T extends EntityType>(
    type: T,
    entity: Omit<EntityMap[T], 'version' | 'createdAt' | 'updatedAt'>,
  ): Promise<EntityMap[T]> {
    const spec = this.createSpec(type, entity);
    try {
      await this.client.send(new PutCommand(spec.put));
    } catch (e) {
      if (e instanceof ConditionalCheckFailedException) throw spec.exists(e);
      throw e;
    }
    return spec.full as EntityMap[T];
  }

  private createSpec(type: EntityType, entity: object) {
    const now = this.clock.now().toISOString();
    const full = { ...entity, version: 1, createdAt: now, updatedAt: now };
    const key = keyOf(type, full);
    return {
      full,
      put: {
        TableName: this.tableName,
        Item: this.toItem(type, full),
        ConditionExpression: 'attribute_not_exists(pk)',
      },
      exists: (cause: unknown) =>
        new ConflictError(`${type} ${describeKey(key)} already exists`, { type, id: key.id }, { cause }),
    };
  }

  async update<T extends EntityType>(
    key: EntityKey<T>,
    expectedVersion: number,
    changes: Partial<EntityMap[T]>,
  ): Promise<EntityMap[T]> {
    if ('status' in changes || 'lease' in changes) {
      // A status change must go through transition(), which checks the state machine and leases.
      throw new Error(`update() cannot change status or lease of ${key.type}; use transition()`);
    }
    return this.write(this.updateSpec(key, expectedVersion, changes));
  }

  private updateSpec(key: EntityKey, expectedVersion: number, changes: object): UpdateSpec {
    const b = new UpdateBuilder();
    this.applyChanges(b, key, changes as Record<string, unknown>);
    const condition = `attribute_exists(pk) AND ${b.name('version')} = ${b.value(expectedVersion)}`;
    return { key, b, condition, explain: () => `expected version ${expectedVersion}` };
  }

  async updateWhere<T extends EntityType>(
    key: EntityKey<T>,
    condition: { field: keyof EntityMap[T] & string; oneOf: readonly (string | number)[] },
    changes: Partial<EntityMap[T]>,
  ): Promise<EntityMap[T]> {
    const b = new UpdateBuilder();
    this.applyChanges(b, key, changes);
    const values = condition.oneOf.map((v) => b.value(v)).join(', ');
    const expression = `attribute_exists(pk) AND ${b.name(condition.field)} IN (${values})`;
    return this.write({
      key,
      b,
      condition: expression,
      explain: (current) => `${condition.field} is ${String(current[condition.field])}`,
    });
  }

  async transition<T extends EntityType>(request: TransitionRequest<T>): Promise<EntityMap[T]> {
    return this.write(this.transitionSpec(request));
  }

  private transitionSpec<T extends EntityType>(request: TransitionRequest<T>): UpdateSpec {
    const { key, machine, to } = request;
    const fromStates = (Array.isArray(request.from) ? request.from : [request.from]) as StatusOf<T>[];
    const legal = fromStates.filter((from) => canTransition(machine, from, to));
    if (legal.length === 0) {
      // A programming error in the caller, but still a conflict rather than a crash.
      assertTransition(machine, fromStates[0] as StatusOf<T>, to, { id: key.id });
    }
    const leasedTarget = machine.leased[to] !== undefined;
    if (leasedTarget && !request.lease) {
      throw new Error(`${machine.name} state ${to} is transitional and needs a lease`);
    }

    const b = new UpdateBuilder();
    this.applyChanges(b, key, (request.changes ?? {}) as Partial<EntityMap[T]>);
    b.set('status', to);
    if (leasedTarget && request.lease) {
      const expiresAt = new Date(this.clock.now().getTime() + request.lease.ttlSeconds * 1000).toISOString();
      const lease: Lease = { owner: request.lease.owner, expiresAt };
      b.set('lease', lease).set('leasePk', LEASE_PARTITION).set('leaseExpiresAt', expiresAt);
    } else {
      b.remove('lease').remove('leasePk').remove('leaseExpiresAt');
    }

    const statusName = b.name('status');
    const conditions = [
      `attribute_exists(pk)`,
      `${statusName} IN (${legal.map((s) => b.value(s)).join(', ')})`,
    ];
    if (request.expectedVersion !== undefined) {
      conditions.push(`${b.name('version')} = ${b.value(request.expectedVersion)}`);
    }
    if (request.leaseOwner !== undefined) {
      conditions.push(`${b.name('lease')}.${b.name('owner')} = ${b.value(request.leaseOwner)}`);
    }
    return {
      key,
      b,
      condition: conditions.join(' AND '),
      explain: (current) => {
        const state = String(current.status);
        if (!legal.includes(state as StatusOf<T>)) return `it is ${state}, not ${legal.join(' or ')}`;
        if (request.leaseOwner !== undefined) {
          const lease = current.lease as Lease | undefined;
          if (lease?.owner !== request.leaseOwner) return `its lease belongs to ${lease?.owner ?? 'nobody'}`;
        }
        return `it changed (version ${String(current.version)})`;
      },
    };
  }

  async delete<T extends EntityType>(key: EntityKey<T>, expectedVersion?: number): Promise<void> {
    if (expectedVersion === undefined) {
      await this.client.send(new DeleteCommand({ TableName: this.tableName, Key: itemKey(key) }));
      return;
    }
    try {
      await this.client.send(new DeleteCommand(this.deleteInput(key, expectedVersion)));
    } catch (e) {
      throw this.conditionError(key, e, () => `expected version ${expectedVersion}`);
    }
  }

  private deleteInput(key: EntityKey, expectedVersion: number) {
    return {
      TableName: this.tableName,
      Key: itemKey(key),
      ConditionExpression: 'attribute_exists(pk) AND #version = :v',
      ExpressionAttributeNames: { '#version': 'version' },
      ExpressionAttributeValues: { ':v': expectedVersion },
      ReturnValuesOnConditionCheckFailure: 'ALL_OLD' as const,
    };
  }

  async list<T extends EntityType>(type: T, options: ListOptions = {}): Promise<Page<EntityMap[T]>> {
    const input: QueryCommandInput = {
      TableName: this.tableName,
      IndexName: TableSchema.byType.indexName,
      KeyConditionExpression: '#pk = :pk',
      ExpressionAttributeNames: { '#pk': TableSchema.byType.partitionKey },
      ExpressionAttributeValues: { ':pk': type },
    };
    const filters = Object.entries(options.filter ?? {});
    if (filters.length) {
      // A dotted name filters on a nested field (e.g. `target.id`).
      input.FilterExpression = filters
        .map(([name], i) =>
          name
            .split('.')
            .map((_, j) => `#f${i}_${j}`)
            .join('.')
            .concat(` = :f${i}`),
        )
        .join(' AND ');
      filters.forEach(([name, value], i) => {
        name.split('.').forEach((part, j) => {
          input.ExpressionAttributeNames![`#f${i}_${j}`] = part;
        });
        input.ExpressionAttributeValues![`:f${i}`] = value;
      });
    }
    return this.query<T>(type, input, options);
  }

  async listCopies<T extends 'TemplateInStore' | 'SnapshotInStore'>(
    type: T,
    id: string,
  ): Promise<EntityMap[T][]> {
    const { pk } = itemKey({ type, id, storeId: 'x' });
    const items: EntityMap[T][] = [];
    let cursor: string | undefined;
    do {
      const page = await this.query<T>(
        type,
        {
          TableName: this.tableName,
          KeyConditionExpression: '#pk = :pk AND begins_with(#sk, :store)',
          ExpressionAttributeNames: { '#pk': 'pk', '#sk': 'sk' },
          ExpressionAttributeValues: { ':pk': pk, ':store': 'STORE#' },
          ConsistentRead: true,
        },
        { cursor },
      );
      items.push(...page.items);
      cursor = page.cursor;
    } while (cursor);
    return items;
  }

  async listInStore(storeId: string, options: ListOptions = {}): Promise<Page<EntityMap[EntityType]>> {
    return this.query(
      undefined,
      {
        TableName: this.tableName,
        IndexName: TableSchema.byStore.indexName,
        KeyConditionExpression: '#pk = :pk',
        ExpressionAttributeNames: { '#pk': TableSchema.byStore.partitionKey },
        ExpressionAttributeValues: { ':pk': `STORE#${storeId}` },
      },
      options,
    );
  }

  async putMapEntry<T extends EntityType>(
    key: EntityKey<T>,
    field: keyof EntityMap[T] & string,
    entry: string,
    value: unknown,
    condition: { field: keyof EntityMap[T] & string; oneOf: readonly (string | number)[] },
  ): Promise<void> {
    const attempt = async (whole: boolean) => {
      const b = new UpdateBuilder();
      const names: Record<string, string> = whole
        ? { '#mapField': field }
        : { '#mapField': field, '#mapEntry': entry };
      if (whole) b.setExpression(`#mapField = ${b.value({ [entry]: value })}`);
      else b.setExpression(`#mapField.#mapEntry = ${b.value(value)}`);
      b.setExpression(`${b.name('version')} = ${b.name('version')} + ${b.value(1)}`);
      b.set('updatedAt', this.clock.now().toISOString());
      Object.assign(b.names, names);
      const values = condition.oneOf.map((v) => b.value(v)).join(', ');
      const expression = [
        'attribute_exists(pk)',
        `${b.name(condition.field)} IN (${values})`,
        whole ? 'attribute_not_exists(#mapField)' : 'attribute_exists(#mapField)',
      ].join(' AND ');
      await this.write({
        key,
        b,
        condition: expression,
        explain: (current) => `${condition.field} is ${String(current[condition.field])}`,
      });
    };
    try {
      await attempt(false);
    } catch (e) {
      // No map yet (the condition named it): create it with this entry. Losing that race to another
      // writer creating it means the map now exists, so the nested set is tried once more.
      if (!(e instanceof ConflictError)) throw e;
      const current = await this.get(key);
      const state = current ? (current as unknown as Record<string, unknown>)[condition.field] : undefined;
      if (!current || !condition.oneOf.includes(state as string | number)) throw e;
      if ((current as unknown as Record<string, unknown>)[field] !== undefined) return attempt(false);
      await attempt(true).catch(async (again: unknown) => {
        if (!(again instanceof ConflictError)) throw again;
        await attempt(false);
      });
    }
  }

  async claimExpiredLease<T extends EntityType>(
    key: EntityKey<T>,
    owner: string,
    now: Date,
    ttlSeconds: number,
  ): Promise<boolean> {
    const expiresAt = new Date(now.getTime() + ttlSeconds * 1000);
    return this.moveLease(key, owner, expiresAt, { expiredBefore: now });
  }

  async expireLease<T extends EntityType>(key: EntityKey<T>, owner: string, at: Date): Promise<boolean> {
    return this.moveLease(key, owner, at);
  }

  /** False also when the lease already runs longer than the renewal would make it. */
  async renewLease<T extends EntityType>(
    key: EntityKey<T>,
    owner: string,
    ttlSeconds: number,
  ): Promise<boolean> {
    const expiresAt = new Date(this.clock.now().getTime() + ttlSeconds * 1000);
    // Never made shorter (ISO-8601 UTC strings order as times do).
    return this.moveLease(key, owner, expiresAt, { expiredBefore: expiresAt });
  }

  /**
   * Sets the expiry of `owner`'s lease to `expiresAt`, if the lease is still `owner`'s and (with
   * `expiredBefore`) its expiry is earlier than that. Bookkeeping, not a change of the entity: the
   * version stays, so no writer holding a read of it loses a race to a heartbeat. False when the
   * condition does not hold or the entity is gone.
   */
  private async moveLease<T extends EntityType>(
    key: EntityKey<T>,
    owner: string,
    expiresAt: Date,
    options: { expiredBefore?: Date } = {},
  ): Promise<boolean> {
    const b = new UpdateBuilder();
    const at = b.value(expiresAt.toISOString());
    const expiry = `${b.name('lease')}.${b.name('expiresAt')}`;
    b.setExpression(`${expiry} = ${at}`);
    b.setExpression(`${b.name('leaseExpiresAt')} = ${at}`);
    const conditions = ['attribute_exists(pk)', `${b.name('lease')}.${b.name('owner')} = ${b.value(owner)}`];
    if (options.expiredBefore) conditions.push(`${expiry} < ${b.value(options.expiredBefore.toISOString())}`);
    try {
      await this.write({
        key,
        b,
        condition: conditions.join(' AND '),
        explain: () => `the lease is not ${owner}'s as required`,
      });
      return true;
    } catch (e) {
      if (e instanceof ConflictError || e instanceof NotFoundError) return false;
      throw e;
    }
  }

  async updateSet<T extends EntityType>(
    key: EntityKey<T>,
    field: keyof EntityMap[T] & string,
    add: string[],
    remove: string[],
    when?: { field: keyof EntityMap[T] & string; oneOf: readonly (string | number)[] },
  ): Promise<EntityMap[T]> {
    const b = new UpdateBuilder();
    if (add.length) b.add(field, new Set(add));
    if (remove.length) b.delete(field, new Set(remove));
    b.setExpression(`${b.name('version')} = ${b.name('version')} + ${b.value(1)}`);
    b.set('updatedAt', this.clock.now().toISOString());
    const conditions = ['attribute_exists(pk)'];
    if (when) conditions.push(`${b.name(when.field)} IN (${when.oneOf.map((v) => b.value(v)).join(', ')})`);
    return this.write({
      key,
      b,
      condition: conditions.join(' AND '),
      explain: (current) => (when ? `${when.field} is ${String(current[when.field])}` : 'it is gone'),
    });
  }

  async addToCounter<T extends EntityType>(
    key: EntityKey<T>,
    field: keyof EntityMap[T] & string,
    delta: number,
    options: { max?: number } = {},
  ): Promise<EntityMap[T]> {
    return this.write(this.counterSpec(key, field, delta, options));
  }

  private counterSpec(
    key: EntityKey,
    field: string,
    delta: number,
    options: {
      max?: number;
      when?: { field: string; oneOf: readonly (string | number)[] };
      unlessSet?: string;
    },
  ): UpdateSpec {
    const b = new UpdateBuilder();
    const f = b.name(field);
    // A counter an entity never had starts at zero (rows written before the counter existed).
    b.setExpression(`${f} = if_not_exists(${f}, ${b.value(0)}) + ${b.value(delta)}`);
    b.setExpression(`${b.name('version')} = ${b.name('version')} + ${b.value(1)}`);
    b.set('updatedAt', this.clock.now().toISOString());
    // DynamoDB conditions cannot add, so the bound is moved to the other side.
    const conditions = ['attribute_exists(pk)'];
    if (delta > 0 && options.max !== undefined) conditions.push(`${f} <= ${b.value(options.max - delta)}`);
    if (delta < 0) conditions.push(`${f} >= ${b.value(-delta)}`);
    const when = options.when;
    if (when) conditions.push(`${b.name(when.field)} IN (${when.oneOf.map((v) => b.value(v)).join(', ')})`);
    const unlessSet = options.unlessSet;
    if (unlessSet) conditions.push(`attribute_not_exists(${b.name(unlessSet)})`);
    return {
      key,
      b,
      condition: conditions.join(' AND '),
      explain: (current) => {
        if (when && !when.oneOf.includes(current[when.field] as string | number))
          return `${when.field} is ${String(current[when.field])}`;
        if (unlessSet && current[unlessSet] !== undefined) return `${unlessSet} is set`;
        const now = Number(current[field]);
        return delta > 0
          ? `${field} ${now} + ${delta} would exceed ${options.max}`
          : `${field} ${now} - ${-delta} would go below zero`;
      },
    };
  }

  async transact(writes: readonly WriteOp[]): Promise<void> {
    if (writes.length === 0) return;
    const explained: Array<(cause: unknown, old: Item | undefined) => unknown> = [];
    const items: TransactWriteCommandInput['TransactItems'] = writes.map((write) => {
      switch (write.op) {
        case 'create': {
          const spec = this.createSpec(write.type, write.entity);
          explained.push((cause) => spec.exists(cause));
          return { Put: { ...spec.put, ReturnValuesOnConditionCheckFailure: 'ALL_OLD' } };
        }
        case 'delete': {
          if (write.expectedVersion === undefined) {
            explained.push(() => undefined);
            return { Delete: { TableName: this.tableName, Key: itemKey(write.key) } };
          }
          const version = write.expectedVersion;
          explained.push((cause, old) =>
            this.explainFailure(write.key, cause, old, () => `expected version ${version}`),
          );
          return { Delete: this.deleteInput(write.key, version) };
        }
        default: {
          const spec =
            write.op === 'update'
              ? this.updateSpec(write.key, write.expectedVersion, write.changes)
              : write.op === 'transition'
                ? this.transitionSpec(write.request)
                : this.counterSpec(write.key, write.field, write.delta, write);
          explained.push((cause, old) => this.explainFailure(spec.key, cause, old, spec.explain));
          return {
            Update: {
              TableName: this.tableName,
              Key: itemKey(spec.key),
              UpdateExpression: spec.b.expression(),
              ConditionExpression: spec.condition,
              ExpressionAttributeNames: spec.b.names,
              ExpressionAttributeValues: Object.keys(spec.b.values).length ? spec.b.values : undefined,
              ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
            },
          };
        }
      }
    });
    try {
      await this.client.send(new TransactWriteCommand({ TransactItems: items }));
    } catch (e) {
      if (!(e instanceof TransactionCanceledException)) throw e;
      const reasons = e.CancellationReasons ?? [];
      const failed = reasons.findIndex((r) => r.Code === 'ConditionalCheckFailed');
      if (failed < 0) {
        // A conflict with another transaction, or throttling: nothing was written; worth retrying.
        throw new UnavailableError(
          `the ${writes.length} writes could not be applied together: ${reasons.map((r) => r.Code).join(', ')}`,
          {},
          { cause: e },
        );
      }
      const old = reasons[failed]?.Item ? (unmarshall(reasons[failed]!.Item!) as Item) : undefined;
      throw explained[failed]!(e, old) ?? e;
    }
  }

  async listExpiredLeases(
    now: Date,
    options: ListOptions = {},
  ): Promise<Page<EntityMap[EntityType] & { lease: Lease }>> {
    const page = await this.query(
      undefined,
      {
        TableName: this.tableName,
        IndexName: TableSchema.byLease.indexName,
        KeyConditionExpression: '#pk = :pk AND #exp < :now',
        ExpressionAttributeNames: {
          '#pk': TableSchema.byLease.partitionKey,
          '#exp': TableSchema.byLease.sortKey,
        },
        ExpressionAttributeValues: { ':pk': LEASE_PARTITION, ':now': now.toISOString() },
      },
      options,
    );
    return page as Page<EntityMap[EntityType] & { lease: Lease }>;
  }

  /** The entity type of an item read from an index (every item records its own). */
  static entityTypeOf(entity: object): EntityType | undefined {
    return (entity as { entityType?: EntityType }).entityType;
  }

  private applyChanges(b: UpdateBuilder, key: EntityKey, changes: Record<string, unknown>): void {
    const type = key.type;
    const setFields = SET_FIELDS[type] ?? [];
    for (const [field, value] of Object.entries(changes)) {
      if (field === 'lease' && value === undefined) {
        // Letting go of a lease (a job that ended) takes it out of the lease index too.
        b.remove('lease').remove('leasePk').remove('leaseExpiresAt');
        continue;
      }
      if (['version', 'createdAt', 'updatedAt', 'status', 'lease'].includes(field)) continue;
      if (setFields.includes(field)) {
        const members = value as string[] | undefined;
        b.set(field, members && members.length > 0 ? new Set(members) : undefined);
      } else {
        b.set(field, value);
      }
    }
    // Index attributes follow the fields they derive from (e.g. a volume moving to another store).
    if ('storeId' in changes && type === 'Volume') {
      const storeId = changes.storeId as string | undefined;
      b.set('gsi2pk', storeId ? `STORE#${storeId}` : undefined);
      b.set('gsi2sk', storeId ? `Volume#${key.id}` : undefined);
    }
    b.setExpression(`${b.name('version')} = ${b.name('version')} + ${b.value(1)}`);
    b.set('updatedAt', this.clock.now().toISOString());
  }

  private async write<T extends EntityType>({
    key,
    b,
    condition,
    explain,
  }: UpdateSpec): Promise<EntityMap[T]> {
    try {
      const out = await this.client.send(
        new UpdateCommand({
          TableName: this.tableName,
          Key: itemKey(key),
          UpdateExpression: b.expression(),
          ConditionExpression: condition,
          ExpressionAttributeNames: b.names,
          ExpressionAttributeValues: Object.keys(b.values).length ? b.values : undefined,
          ReturnValues: 'ALL_NEW',
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
      return this.fromItem<T>(key.type as T, out.Attributes ?? {});
    } catch (e) {
      throw this.conditionError(key, e, explain);
    }
  }

  private conditionError(key: EntityKey, e: unknown, explain: (current: Item) => string): unknown {
    if (!(e instanceof ConditionalCheckFailedException)) return e;
    return this.explainFailure(key, e, e.Item ? (unmarshall(e.Item) as Item) : undefined, explain);
  }

  /** NotFoundError when the item is missing, else a ConflictError saying which condition it broke. */
  private explainFailure(
    key: EntityKey,
    e: unknown,
    current: Item | undefined,
    explain: (current: Item) => string,
  ): Error {
    if (!current)
      return new NotFoundError(`${key.type} ${describeKey(key)} not found`, { type: key.type, id: key.id });
    return new ConflictError(
      `${key.type} ${describeKey(key)} was not changed: ${explain(current)}`,
      { type: key.type, id: key.id, state: current.status, version: current.version },
      { cause: e },
    );
  }

  private async query<T extends EntityType>(
    type: T | undefined,
    input: QueryCommandInput,
    options: ListOptions,
  ): Promise<Page<EntityMap[T]>> {
    const out = await this.client.send(
      new QueryCommand({
        ...input,
        Limit: options.limit,
        ExclusiveStartKey: options.cursor ? decodeCursor(options.cursor) : undefined,
      }),
    );
    const items = (out.Items ?? []).map((item) =>
      this.fromItem<T>((type ?? (item.entityType as EntityType)) as T, item),
    );
    return { items, cursor: out.LastEvaluatedKey ? encodeCursor(out.LastEvaluatedKey) : undefined };
  }

  private toItem(type: EntityType, entity: object): Item {
    const item: Item = { ...(entity as Item), ...itemKey(keyOf(type, entity)), entityType: type };
    Object.assign(item, indexAttributes(type, item));
    for (const field of SET_FIELDS[type] ?? []) {
      const members = item[field] as string[] | undefined;
      if (members && members.length > 0) item[field] = new Set(members);
      else delete item[field];
    }
    const lease = item.lease as Lease | undefined;
    if (lease) {
      item.leasePk = LEASE_PARTITION;
      item.leaseExpiresAt = lease.expiresAt;
    }
    if (type === 'Idempotency') item[TableSchema.ttlAttribute] = item.expiresAtEpoch;
    return item;
  }

  private fromItem<T extends EntityType>(type: T, item: Item): EntityMap[T] {
    const entity: Item = { ...item };
    for (const attr of INTERNAL_ATTRIBUTES) delete entity[attr];
    for (const field of SET_FIELDS[type] ?? []) {
      const members = entity[field];
      entity[field] = members instanceof Set ? [...members].sort() : [];
    }
    // Items read through an index keep their type (not enumerable: it is not part of the entity).
    Object.defineProperty(entity, 'entityType', { value: item.entityType, enumerable: false });
    return entity as unknown as EntityMap[T];
  }
}

function describeKey(key: EntityKey): string {
  return key.storeId ? `${key.id} on store ${key.storeId}` : key.id;
}

function encodeCursor(key: Record<string, unknown>): string {
  return Buffer.from(JSON.stringify(key), 'utf8').toString('base64url');
}

function decodeCursor(cursor: string): Record<string, unknown> {
  try {
    const parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as unknown;
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed))
      return parsed as Record<string, unknown>;
  } catch {
    // fall through to the input error below
  }
  throw new InputError('cursor is not valid', { field: 'cursor' });
}
