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
import { ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';
import { DeleteCommand, type DynamoDBDocumentClient, GetCommand, UpdateCommand } from '@aws-sdk/lib-dynamodb';
import { UnavailableError } from '../../core/errors.js';
import { forEachLimit } from '../../core/pool.js';
import type { ChunkIndex, Clock } from '../../core/ports.js';

/** A claim older than this belongs to a collector that died (Lambda's 15-minute limit, plus margin). */
export const STALE_CLAIM_MS = 20 * 60 * 1000;
const CONCURRENCY = 16;

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

  async pin(storeId: string, hashes: readonly string[], holder: string): Promise<{ unstored: string[] }> {
    const unstored: string[] = [];
    await forEachLimit([...new Set(hashes)], CONCURRENCY, async (hash) => {
      if (!(await this.pinOne(storeId, hash, holder))) unstored.push(hash);
    });
    return { unstored };
  }

  /** True when the chunk's object is stored. */
  private async pinOne(storeId: string, hash: string, holder: string): Promise<boolean> {
    try {
      const out = await this.doc.send(
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
        await this.doc.send(
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
    await forEachLimit([...new Set(hashes)], CONCURRENCY, async (hash) => {
      await this.doc.send(
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

  async release(
    storeId: string,
    hashes: readonly string[],
    holder: string,
    options: { collect: boolean },
  ): Promise<{ collectable: string[] }> {
    const collectable: string[] = [];
    await forEachLimit([...new Set(hashes)], CONCURRENCY, async (hash) => {
      let left: Set<string> | undefined;
      try {
        const out = await this.doc.send(
          new UpdateCommand({
            TableName: this.options.tableName,
            Key: key(storeId, hash),
            UpdateExpression: 'DELETE holders :h',
            ConditionExpression: 'attribute_exists(pk)',
            ExpressionAttributeValues: { ':h': new Set([holder]) },
            ReturnValues: 'ALL_NEW',
          }),
        );
        left = out.Attributes?.holders as Set<string> | undefined;
      } catch (e) {
        if (e instanceof ConditionalCheckFailedException) return; // not indexed: nothing held
        throw e;
      }
      if (!options.collect || (left && left.size > 0)) return;
      try {
        await this.doc.send(
          new UpdateCommand({
            TableName: this.options.tableName,
            Key: key(storeId, hash),
            UpdateExpression: 'SET gcState = :d, gcAt = :now',
            ConditionExpression:
              'attribute_exists(pk) AND attribute_not_exists(holders) AND attribute_not_exists(gcState)',
            ExpressionAttributeValues: { ':d': 'deleting', ':now': this.options.clock.now().toISOString() },
          }),
        );
        collectable.push(hash);
      } catch (e) {
        // Pinned again meanwhile, or another collector claimed it first: not ours to delete.
        if (!(e instanceof ConditionalCheckFailedException)) throw e;
      }
    });
    return { collectable };
  }

  async forget(storeId: string, hashes: readonly string[]): Promise<void> {
    await forEachLimit([...new Set(hashes)], CONCURRENCY, async (hash) => {
      try {
        await this.doc.send(
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
