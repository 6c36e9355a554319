/**
 * The ChunkIndex port on the Strata table. One item per (image store, chunk hash):
 *
 * | pk                        | sk   | holders (string set) | isStored | gcState  | gcAt |
 * |---------------------------|------|----------------------|--------|------------|------|
 * | CHUNK#<store>#<sha256>    | META | snap-1, snap-7, job-3| true   | (deleting) | ISO  |
 *
 * Besides: `isVerified` (stored with a SHA-256 checksum the store verified; entries from before
 * checksums were kept lack it and count as unverified), `storedAt` (when last marked stored), and a
 * verify job's mark on a chunk it found corrupt or missing (`corruptBy`, `corruptReason`,
 * `corruptAt`; `isStored` false), which the next markStored clears.
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
import {
  type ChunkEntry,
  type ChunkIndex,
  type ChunkPage,
  type Clock,
  type PinResult,
  STALE_CLAIM_MS,
} from '../../core/ports.js';

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

/** The store's damage record: when a verify job last marked one of its chunks. */
function damageKey(storeId: string): { pk: string; sk: string } {
  return { pk: `CHUNKDAMAGE#${storeId}`, sk: 'META' };
}

/** How a pinned chunk's item classifies it (see PinResult). */
function classify(
  item: Record<string, unknown> | undefined,
): 'stored' | 'unverified' | 'unstored' | 'corrupt' {
  if (item?.isStored === true) return item.isVerified === true ? 'stored' : 'unverified';
  return item?.corruptBy ? 'corrupt' : 'unstored';
}

function toEntry(item: Record<string, unknown>, prefix: string): ChunkEntry {
  return {
    hash: String(item.pk).slice(prefix.length),
    holders: [...((item.holders as Set<string> | undefined) ?? [])].sort(),
    stored: item.isStored === true,
    verified: item.isVerified === true,
    ...(item.storedAt ? { storedAt: String(item.storedAt) } : {}),
    ...(item.corruptBy
      ? {
          corrupt: {
            jobId: String(item.corruptBy),
            reason: item.corruptReason === 'missing' ? ('missing' as const) : ('corrupt' as const),
            at: String(item.corruptAt ?? ''),
          },
        }
      : {}),
    ...(item.gcState === 'deleting' ? { claimedAt: String(item.gcAt) } : {}),
    ...(item.releasedAt ? { releasedAt: String(item.releasedAt) } : {}),
  };
}

/** A scan cursor: the Scan's LastEvaluatedKey, opaque to callers (base64url JSON). */
function encodeCursor(last: Record<string, unknown>): string {
  return Buffer.from(JSON.stringify({ pk: last.pk, sk: last.sk })).toString('base64url');
}

function decodeCursor(cursor: string): { pk: string; sk: string } {
  try {
    const parsed = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as {
      pk?: unknown;
      sk?: unknown;
    };
    if (typeof parsed.pk === 'string' && typeof parsed.sk === 'string')
      return { pk: parsed.pk, sk: parsed.sk };
  } catch {
    // falls through
  }
  throw new Error('not a chunk index cursor');
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
  async pin(storeId: string, hashes: readonly string[], holder: string): Promise<PinResult> {
    const result: PinResult = { unstored: [], corrupt: [], unverified: [] };
    const note = (hash: string, state: ReturnType<typeof classify>) => {
      if (state === 'unverified') result.unverified.push(hash);
      if (state === 'unstored' || state === 'corrupt') result.unstored.push(hash);
      if (state === 'corrupt') result.corrupt.push(hash);
    };
    const update = { expression: 'ADD holders :h', condition: 'attribute_not_exists(gcState)' };
    await this.inTransactions(storeId, hashes, update, { ':h': new Set([holder]) }, async (group, pinned) => {
      if (!pinned) {
        await forEachLimit(group, CONCURRENCY, async (hash) => {
          note(hash, await this.pinOne(storeId, hash, holder));
        });
        return;
      }
      const items = await this.readMany(storeId, group);
      for (const hash of group) note(hash, classify(items.get(hash)));
    });
    return result;
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

  /** Pins one chunk and says what its item says of its object. */
  private async pinOne(storeId: string, hash: string, holder: string): Promise<ReturnType<typeof classify>> {
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
      return classify(out.Attributes);
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
            UpdateExpression: 'REMOVE gcState, gcAt, isVerified SET isStored = :f ADD holders :h',
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
      return 'unstored';
    }
  }

  async markStored(storeId: string, hashes: readonly string[]): Promise<void> {
    const pending: string[] = [];
    const expression =
      'SET isStored = :t, isVerified = :t, storedAt = :now REMOVE corruptBy, corruptReason, corruptAt';
    const update = {
      expression,
      condition: 'attribute_exists(pk) AND attribute_not_exists(gcState)',
    };
    const values = { ':t': true, ':now': this.options.clock.now().toISOString() };
    await this.inTransactions(storeId, hashes, update, values, async (group, done) => {
      if (!done) pending.push(...group);
    });
    // Chunk by chunk, so that a chunk that vanished or is being collected fails loudly.
    await forEachLimit(pending, CONCURRENCY, async (hash) => {
      await this.send(
        new UpdateCommand({
          TableName: this.options.tableName,
          Key: key(storeId, hash),
          UpdateExpression: expression,
          ConditionExpression: 'attribute_exists(pk) AND attribute_not_exists(gcState)',
          ExpressionAttributeValues: values,
        }),
      );
    });
  }

  async scanPage(storeId: string, options: { cursor?: string; limit: number }): Promise<ChunkPage> {
    const prefix = `CHUNK#${storeId}#`;
    const out: ScanCommandOutput = await this.doc.send(
      new ScanCommand({
        TableName: this.options.tableName,
        FilterExpression: 'begins_with(pk, :p) AND sk = :meta',
        ExpressionAttributeValues: { ':p': prefix, ':meta': 'META' },
        ConsistentRead: true,
        // Limit bounds the items read (before the filter), so a page never holds more than it.
        Limit: options.limit,
        ...(options.cursor ? { ExclusiveStartKey: decodeCursor(options.cursor) } : {}),
      }),
    );
    return {
      entries: (out.Items ?? []).map((item) => toEntry(item, prefix)),
      ...(out.LastEvaluatedKey ? { cursor: encodeCursor(out.LastEvaluatedKey) } : {}),
    };
  }

  async markCorrupt(
    storeId: string,
    hash: string,
    mark: { jobId: string; reason: 'corrupt' | 'missing'; storedAt?: string },
  ): Promise<boolean> {
    const unchanged = mark.storedAt ? 'storedAt = :seen' : 'attribute_not_exists(storedAt)';
    // The store's damage time first: a backup that starts after it never inherits holds unchecked.
    await this.doc.send(
      new UpdateCommand({
        TableName: this.options.tableName,
        Key: damageKey(storeId),
        UpdateExpression: 'SET lastDamageAt = :now',
        ExpressionAttributeValues: { ':now': this.options.clock.now().toISOString() },
      }),
    );
    return this.conditional(
      new UpdateCommand({
        TableName: this.options.tableName,
        Key: key(storeId, hash),
        UpdateExpression:
          'SET isStored = :f, corruptBy = :job, corruptReason = :reason, corruptAt = :now REMOVE isVerified',
        ConditionExpression: `attribute_exists(pk) AND attribute_not_exists(gcState) AND isStored = :t AND ${unchanged}`,
        ExpressionAttributeValues: {
          ':f': false,
          ':t': true,
          ':job': mark.jobId,
          ':reason': mark.reason,
          ':now': this.options.clock.now().toISOString(),
          ...(mark.storedAt ? { ':seen': mark.storedAt } : {}),
        },
      }),
    );
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
      for (const item of out.Items ?? []) entries.push(toEntry(item, prefix));
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

  async lastDamageAt(storeId: string): Promise<string | undefined> {
    const out = await this.doc.send(
      new GetCommand({ TableName: this.options.tableName, Key: damageKey(storeId), ConsistentRead: true }),
    );
    return out.Item?.lastDamageAt ? String(out.Item.lastDamageAt) : undefined;
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
