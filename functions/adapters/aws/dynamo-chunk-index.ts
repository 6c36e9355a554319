/**
 * The ChunkIndex port on the Strata table. One item per (image store, chunk hash):
 *
 * | pk                        | sk   | holders (string set) | isStored | gcState  | gcAt |
 * |---------------------------|------|----------------------|--------|------------|------|
 * | CHUNK#<store>#<sha256>    | META | snap-1, snap-7, job-3| true   | (deleting) | ISO  |
 *
 * The items carry no index attributes, so they never appear in entity listings. Every write is a
 * single conditional UpdateItem, so holders are added and removed atomically and idempotently.
 * Collection is two-step: a chunk whose set became empty is claimed (`gcState = deleting`) under the
 * condition that it still has no holder; a pin fails on a claimed chunk until the claim is older
 * than any collector can run (a Lambda runs at most 15 minutes), after which the pin takes it over
 * and asks for the chunk to be uploaded again.
 */
import { ConditionalCheckFailedException, TransactionCanceledException } from '@aws-sdk/client-dynamodb';
import {
  BatchGetCommand,
  DeleteCommand,
  type DynamoDBDocumentClient,
  GetCommand,
  ScanCommand,
  type ScanCommandOutput,
  TransactWriteCommand,
  type TransactWriteCommandInput,
  UpdateCommand,
  type UpdateCommandOutput,
} from '@aws-sdk/lib-dynamodb';
import { UnavailableError } from '../../core/errors.js';
import { forEachLimit } from '../../core/pool.js';
import { type ChunkEntry, type ChunkIndex, type Clock, STALE_CLAIM_MS } from '../../core/ports.js';

const CONCURRENCY = 16;
/** DynamoDB's limit of items in one transaction. */
const TRANSACTION_ITEMS = 100;
const GROUP_CONCURRENCY = 4;

function groups<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

export interface DynamoChunkIndexOptions {
  tableName: string;
  client: () => DynamoDBDocumentClient;
  clock: Clock;
}

function key(storeId: string, hash: string): { pk: string; sk: string } {
  return { pk: `CHUNK#${storeId}#${hash}`, sk: 'META' };
}

export class DynamoChunkIndex implements ChunkIndex {
  constructor(private readonly options: DynamoChunkIndexOptions) {}

  private get doc(): DynamoDBDocumentClient {
    return this.options.client();
  }

  /**
   * Pins in transactions of up to 100 chunks (one round trip each instead of one per chunk), then
   * reads which are stored with batched consistent reads. A transaction cancelled for any reason
   * (a chunk being collected, a concurrent transaction on the same chunk) is redone chunk by chunk,
   * where a claimed chunk gets its precise answer (wait, or take over a stale claim).
   */
  async pin(storeId: string, hashes: readonly string[], holder: string): Promise<{ unstored: string[] }> {
    const unstored: string[] = [];
    const update = { expression: 'ADD holders :h', condition: 'attribute_not_exists(gcState)' };
    await this.inTransactions(storeId, hashes, update, { ':h': new Set([holder]) }, async (group, pinned) => {
      if (!pinned) {
        await forEachLimit(group, CONCURRENCY, async (hash) => {
          if (!(await this.pinOne(storeId, hash, holder))) unstored.push(hash);
        });
        return;
      }
      const items = await this.readMany(storeId, group);
      for (const hash of group) if (items.get(hash)?.isStored !== true) unstored.push(hash);
    });
    return { unstored };
  }

  /**
   * One single-item write. A write that meets a transaction in flight on the same item is refused
   * (TransactionConflictException) without having happened: it is sent again after a short pause.
   */
  private async send(command: UpdateCommand | DeleteCommand): Promise<UpdateCommandOutput> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.doc.send(command as UpdateCommand);
      } catch (e) {
        if ((e as Error).name !== 'TransactionConflictException' || attempt >= 8) throw e;
        await new Promise((r) => setTimeout(r, 20 * 2 ** attempt * Math.random()));
      }
    }
  }

  /**
   * Applies one update to every chunk, in transactions of up to 100 (a few at once), and hands each
   * group to `then` with whether its transaction was applied (cancelled: nothing of it was written).
   */
  private async inTransactions(
    storeId: string,
    hashes: readonly string[],
    update: { expression: string; condition: string },
    values: Record<string, unknown>,
    then: (group: string[], applied: boolean) => Promise<void>,
  ): Promise<void> {
    await forEachLimit(groups([...new Set(hashes)], TRANSACTION_ITEMS), GROUP_CONCURRENCY, async (group) => {
      const applied = await this.transact(
        group.map((hash) => ({
          Update: {
            TableName: this.options.tableName,
            Key: key(storeId, hash),
            UpdateExpression: update.expression,
            ConditionExpression: update.condition,
            ExpressionAttributeValues: values,
          },
        })),
      );
      await then(group, applied);
    });
  }

  /** Runs one transaction; false when DynamoDB cancelled it (nothing was written). */
  private async transact(items: NonNullable<TransactWriteCommandInput['TransactItems']>): Promise<boolean> {
    try {
      await this.doc.send(new TransactWriteCommand({ TransactItems: items }));
      return true;
    } catch (e) {
      if (e instanceof TransactionCanceledException) return false;
      throw e;
    }
  }

  /** Consistent reads of up to 100 chunks, following unprocessed keys. */
  private async readMany(
    storeId: string,
    hashes: readonly string[],
  ): Promise<Map<string, Record<string, unknown>>> {
    const found = new Map<string, Record<string, unknown>>();
    let keys: Array<Record<string, unknown>> = hashes.map((h) => key(storeId, h));
    for (let attempt = 0; keys.length > 0; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** attempt)));
      const out = await this.doc.send(
        new BatchGetCommand({
          RequestItems: { [this.options.tableName]: { Keys: keys, ConsistentRead: true } },
        }),
      );
      for (const item of out.Responses?.[this.options.tableName] ?? []) {
        found.set(String(item.pk).split('#').pop() ?? '', item);
      }
      keys = (out.UnprocessedKeys?.[this.options.tableName]?.Keys ?? []) as Array<Record<string, unknown>>;
    }
    return found;
  }

  /** True when the chunk's object is stored. */
  private async pinOne(storeId: string, hash: string, holder: string): Promise<boolean> {
    try {
      const out = await this.send(
        new UpdateCommand({
          TableName: this.options.tableName,
          Key: key(storeId, hash),
          UpdateExpression: 'ADD holders :h',
          ConditionExpression: 'attribute_not_exists(gcState)',
          ExpressionAttributeValues: { ':h': new Set([holder]) },
          ReturnValues: 'ALL_NEW',
          ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
        }),
      );
      return out.Attributes?.isStored === true;
    } catch (e) {
      if (!(e instanceof ConditionalCheckFailedException)) throw e;
      const claimedAt = String((e.Item as Record<string, { S?: string }> | undefined)?.gcAt?.S ?? '');
      const stale = new Date(this.options.clock.now().getTime() - STALE_CLAIM_MS).toISOString();
      if (!claimedAt || claimedAt >= stale) {
        throw new UnavailableError(`chunk ${hash} is being collected; retry shortly`, { hash });
      }
      // The collector that claimed it is gone: its object may or may not exist, so upload it again.
      try {
        await this.send(
          new UpdateCommand({
            TableName: this.options.tableName,
            Key: key(storeId, hash),
            UpdateExpression: 'REMOVE gcState, gcAt SET isStored = :f ADD holders :h',
            ConditionExpression: 'gcAt = :claimedAt',
            ExpressionAttributeValues: { ':h': new Set([holder]), ':f': false, ':claimedAt': claimedAt },
          }),
        );
      } catch (again) {
        if (again instanceof ConditionalCheckFailedException) {
          throw new UnavailableError(`chunk ${hash} changed while being taken over; retry`, { hash });
        }
        throw again;
      }
      return false;
    }
  }

  async markStored(storeId: string, hashes: readonly string[]): Promise<void> {
    const pending: string[] = [];
    const update = {
      expression: 'SET isStored = :t',
      condition: 'attribute_exists(pk) AND attribute_not_exists(gcState)',
    };
    await this.inTransactions(storeId, hashes, update, { ':t': true }, async (group, done) => {
      if (!done) pending.push(...group);
    });
    // Chunk by chunk, so that a chunk that vanished or is being collected fails loudly.
    await forEachLimit(pending, CONCURRENCY, async (hash) => {
      await this.send(
        new UpdateCommand({
          TableName: this.options.tableName,
          Key: key(storeId, hash),
          UpdateExpression: 'SET isStored = :t',
          ConditionExpression: 'attribute_exists(pk) AND attribute_not_exists(gcState)',
          ExpressionAttributeValues: { ':t': true },
        }),
      );
    });
  }

  /**
   * Removes the holder in transactions of up to 100 chunks (chunk by chunk when one is cancelled,
   * e.g. a chunk not in the index). With `collect`, the chunks left without any holder are then
   * claimed one by one, each under the condition that it still has none.
   */
  async release(
    storeId: string,
    hashes: readonly string[],
    holder: string,
    options: { collect: boolean },
  ): Promise<{ collectable: string[] }> {
    const collectable: string[] = [];
    const update = {
      expression: 'DELETE holders :h SET releasedAt = :now',
      condition: 'attribute_exists(pk)',
    };
    const values = { ':h': new Set([holder]), ':now': this.options.clock.now().toISOString() };
    await this.inTransactions(storeId, hashes, update, values, async (group, done) => {
      if (!done) {
        await forEachLimit(group, CONCURRENCY, async (hash) => {
          if ((await this.releaseOne(storeId, hash, holder)) && options.collect) {
            if (await this.claim(storeId, hash)) collectable.push(hash);
          }
        });
        return;
      }
      if (!options.collect) return;
      const items = await this.readMany(storeId, group);
      const empty = group.filter((hash) => {
        const held = items.get(hash)?.holders as Set<string> | undefined;
        return items.has(hash) && !(held && held.size > 0);
      });
      await forEachLimit(empty, CONCURRENCY, async (hash) => {
        if (await this.claim(storeId, hash)) collectable.push(hash);
      });
    });
    return { collectable };
  }

  /** Removes one holder; true when the chunk is left with none. */
  private async releaseOne(storeId: string, hash: string, holder: string): Promise<boolean> {
    try {
      const out = await this.send(
        new UpdateCommand({
          TableName: this.options.tableName,
          Key: key(storeId, hash),
          UpdateExpression: 'DELETE holders :h SET releasedAt = :now',
          ConditionExpression: 'attribute_exists(pk)',
          ExpressionAttributeValues: {
            ':h': new Set([holder]),
            ':now': this.options.clock.now().toISOString(),
          },
          ReturnValues: 'ALL_NEW',
        }),
      );
      const left = out.Attributes?.holders as Set<string> | undefined;
      return !(left && left.size > 0);
    } catch (e) {
      if (e instanceof ConditionalCheckFailedException) return false; // not indexed: nothing held
      throw e;
    }
  }

  /** Claims an unheld chunk for deletion; false when it was pinned again or claimed by another. */
  private claim(storeId: string, hash: string): Promise<boolean> {
    return this.conditional(
      new UpdateCommand({
        TableName: this.options.tableName,
        Key: key(storeId, hash),
        UpdateExpression: 'SET gcState = :d, gcAt = :now',
        ConditionExpression:
          'attribute_exists(pk) AND attribute_not_exists(holders) AND attribute_not_exists(gcState)',
        ExpressionAttributeValues: { ':d': 'deleting', ':now': this.options.clock.now().toISOString() },
      }),
    );
  }

  async forget(storeId: string, hashes: readonly string[]): Promise<void> {
    await forEachLimit([...new Set(hashes)], CONCURRENCY, async (hash) => {
      try {
        await this.send(
          new DeleteCommand({
            TableName: this.options.tableName,
            Key: key(storeId, hash),
            ConditionExpression: 'gcState = :d',
            ExpressionAttributeValues: { ':d': 'deleting' },
          }),
        );
      } catch (e) {
        if (!(e instanceof ConditionalCheckFailedException)) throw e;
      }
    });
  }

  async scan(storeId: string): Promise<ChunkEntry[]> {
    const prefix = `CHUNK#${storeId}#`;
    const entries: ChunkEntry[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const out: ScanCommandOutput = await this.doc.send(
        new ScanCommand({
          TableName: this.options.tableName,
          FilterExpression: 'begins_with(pk, :p) AND sk = :meta',
          ExpressionAttributeValues: { ':p': prefix, ':meta': 'META' },
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const item of out.Items ?? []) {
        entries.push({
          hash: String(item.pk).slice(prefix.length),
          holders: [...((item.holders as Set<string> | undefined) ?? [])].sort(),
          stored: item.isStored === true,
          ...(item.gcState === 'deleting' ? { claimedAt: String(item.gcAt) } : {}),
          ...(item.releasedAt ? { releasedAt: String(item.releasedAt) } : {}),
        });
      }
      start = out.LastEvaluatedKey;
    } while (start);
    return entries;
  }

  async claimUnindexed(storeId: string, hash: string): Promise<boolean> {
    return this.conditional(
      new UpdateCommand({
        TableName: this.options.tableName,
        Key: key(storeId, hash),
        UpdateExpression: 'SET gcState = :d, gcAt = :now, isStored = :t',
        ConditionExpression: 'attribute_not_exists(pk)',
        ExpressionAttributeValues: {
          ':d': 'deleting',
          ':now': this.options.clock.now().toISOString(),
          ':t': true,
        },
      }),
    );
  }

  async reclaim(storeId: string, hash: string, claimedAt: string): Promise<boolean> {
    return this.conditional(
      new UpdateCommand({
        TableName: this.options.tableName,
        Key: key(storeId, hash),
        UpdateExpression: 'SET gcAt = :now',
        ConditionExpression: 'gcState = :d AND gcAt = :then',
        ExpressionAttributeValues: {
          ':d': 'deleting',
          ':now': this.options.clock.now().toISOString(),
          ':then': claimedAt,
        },
      }),
    );
  }

  /** True when the write's condition held. */
  private async conditional(command: UpdateCommand): Promise<boolean> {
    try {
      await this.send(command);
      return true;
    } catch (e) {
      if (e instanceof ConditionalCheckFailedException) return false;
      throw e;
    }
  }

  async holders(storeId: string, hash: string): Promise<{ holders: string[]; stored: boolean } | undefined> {
    const out = await this.doc.send(
      new GetCommand({ TableName: this.options.tableName, Key: key(storeId, hash), ConsistentRead: true }),
    );
    if (!out.Item) return undefined;
    return {
      holders: [...((out.Item.holders as Set<string> | undefined) ?? [])].sort(),
      stored: out.Item.isStored === true,
    };
  }
}
