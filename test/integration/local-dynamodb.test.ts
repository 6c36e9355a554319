import {
  CreateTableCommand,
  DescribeTableCommand,
  DescribeTimeToLiveCommand,
  DynamoDBClient,
  ListTablesCommand,
  TransactionCanceledException,
} from '@aws-sdk/client-dynamodb';
import { GetCommand, PutCommand, TransactWriteCommand } from '@aws-sdk/lib-dynamodb';
import { TableSchema } from '../../functions/adapters/aws/table-schema.js';
import { ensureTable, localDynamoClientConfig, startDynamoLocal } from '../../infra/local/dynamodb-local.js';
import { freshTable, integrationEndpoints, tempDir, uniqueName } from '../support/integration.js';

describe('startDynamoLocal', () => {
  it('serves the shared integration endpoint published by global setup', async () => {
    const client = new DynamoDBClient(localDynamoClientConfig(integrationEndpoints().dynamo));
    try {
      const out = await client.send(new ListTablesCommand({}));
      expect(Array.isArray(out.TableNames)).toBe(true);
    } finally {
      client.destroy();
    }
  });

  it('keeps tables in dataDir across a stop and restart, and stop() frees the port', async () => {
    const dataDir = await tempDir('strata-it-ddb-');
    const first = await startDynamoLocal({ dataDir });
    const client = new DynamoDBClient({ ...localDynamoClientConfig(first.endpoint), maxAttempts: 1 });
    try {
      await ensureTable(client, 'persisted');
      await first.stop();
      await expect(client.send(new ListTablesCommand({}))).rejects.toThrow();
    } finally {
      client.destroy();
      await first.stop();
    }

    const second = await startDynamoLocal({ dataDir });
    const again = new DynamoDBClient(localDynamoClientConfig(second.endpoint));
    try {
      const out = await again.send(new ListTablesCommand({}));
      expect(out.TableNames).toContain('persisted');
    } finally {
      again.destroy();
      await second.stop();
    }
  }, 60_000);
});

describe('ensureTable', () => {
  it('creates the table exactly as TableSchema declares it', async () => {
    const { client, tableName } = await freshTable();

    const { Table: table } = await client.send(new DescribeTableCommand({ TableName: tableName }));
    expect(table?.TableStatus).toBe('ACTIVE');
    expect(table?.BillingModeSummary?.BillingMode).toBe('PAY_PER_REQUEST');
    expect(table?.KeySchema).toEqual([
      { AttributeName: TableSchema.partitionKey, KeyType: 'HASH' },
      { AttributeName: TableSchema.sortKey, KeyType: 'RANGE' },
    ]);
    const indexes = Object.fromEntries(
      (table?.GlobalSecondaryIndexes ?? []).map((i) => [
        i.IndexName,
        { keys: i.KeySchema?.map((k) => k.AttributeName), projection: i.Projection?.ProjectionType },
      ]),
    );
    expect(indexes).toEqual({
      'by-type': { keys: ['gsi1pk', 'gsi1sk'], projection: 'ALL' },
      'by-store': { keys: ['gsi2pk', 'gsi2sk'], projection: 'ALL' },
      'by-lease': { keys: ['leasePk', 'leaseExpiresAt'], projection: 'ALL' },
    });
    const ttl = await client.send(new DescribeTimeToLiveCommand({ TableName: tableName }));
    expect(ttl.TimeToLiveDescription).toMatchObject({
      TimeToLiveStatus: 'ENABLED',
      AttributeName: TableSchema.ttlAttribute,
    });
  });

  it('is idempotent, also when calls race', async () => {
    const { client, doc, tableName } = await freshTable();
    await doc.send(new PutCommand({ TableName: tableName, Item: { pk: 'A', sk: 'A', kept: true } }));

    await Promise.all([ensureTable(client, tableName), ensureTable(client, tableName)]);

    const out = await doc.send(new GetCommand({ TableName: tableName, Key: { pk: 'A', sk: 'A' } }));
    expect(out.Item).toEqual({ pk: 'A', sk: 'A', kept: true });
  });

  it('refuses an existing table with another key schema', async () => {
    const { client } = await freshTable();
    const tableName = uniqueName('strata-it-other');
    await client.send(
      new CreateTableCommand({
        TableName: tableName,
        BillingMode: 'PAY_PER_REQUEST',
        AttributeDefinitions: [{ AttributeName: 'id', AttributeType: 'S' }],
        KeySchema: [{ AttributeName: 'id', KeyType: 'HASH' }],
      }),
    );

    await expect(ensureTable(client, tableName)).rejects.toThrow(/different schema/);
  });
});

describe('DynamoDB Local transactions', () => {
  it('applies TransactWriteItems atomically and cancels all of it on a failed condition', async () => {
    const { doc, tableName } = await freshTable();
    await doc.send(
      new TransactWriteCommand({
        TransactItems: [
          { Put: { TableName: tableName, Item: { pk: 'STORE#1', sk: 'STORE', allocatedBytes: 10 } } },
          { Put: { TableName: tableName, Item: { pk: 'VOL#1', sk: 'VOL', storeId: '1' } } },
        ],
      }),
    );

    const conflicting = doc.send(
      new TransactWriteCommand({
        TransactItems: [
          {
            Update: {
              TableName: tableName,
              Key: { pk: 'STORE#1', sk: 'STORE' },
              UpdateExpression: 'SET allocatedBytes = allocatedBytes + :d',
              ExpressionAttributeValues: { ':d': 5 },
            },
          },
          {
            Put: {
              TableName: tableName,
              Item: { pk: 'VOL#1', sk: 'VOL', storeId: '2' },
              ConditionExpression: 'attribute_not_exists(pk)',
              ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
            },
          },
        ],
      }),
    );

    const error = await conflicting.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TransactionCanceledException);
    const reasons = (error as TransactionCanceledException).CancellationReasons;
    expect(reasons?.map((r) => r.Code)).toEqual(['None', 'ConditionalCheckFailed']);
    expect(reasons?.[1]?.Item?.storeId).toEqual({ S: '1' });
    const store = await doc.send(
      new GetCommand({ TableName: tableName, Key: { pk: 'STORE#1', sk: 'STORE' } }),
    );
    expect(store.Item?.allocatedBytes).toBe(10);
  });
});
