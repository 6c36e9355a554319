import {
  CreateTableCommand,
  DynamoDBClient,
  ExecuteStatementCommand,
  ListTablesCommand,
  PutItemCommand,
} from '@aws-sdk/client-dynamodb';
import {
  BatchGetCommand,
  DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  QueryCommand,
  TransactWriteCommand,
  UpdateCommand,
} from '@aws-sdk/lib-dynamodb';
import { TableSchema } from '../../../functions/adapters/aws/table-schema.js';
import type { LocalEndpoint } from '../../../infra/local/aws/aws-server.js';
import { dynamoAuthorizations, startDynamoProxy } from '../../../infra/local/aws/dynamodb-proxy.js';
import {
  type AuthorizationRequest,
  IamAuthorizer,
  type NamedPolicy,
} from '../../../infra/local/aws/iam-authorizer.js';
import {
  type LocalAccount,
  type LocalAwsCredentials,
  LocalCredentialStore,
} from '../../../infra/local/aws/principals.js';
import {
  type DynamoLocal,
  ensureTable,
  localDynamoClientConfig,
  startDynamoLocal,
} from '../../../infra/local/dynamodb-local.js';

jest.setTimeout(60_000);

const account: LocalAccount = { accountId: '123456789012', region: 'us-east-1', partition: 'aws' };
const TABLE = 'strata';
/** A second table no role may batch-read: shows each table of a batch is checked. */
const OTHER = 'other';
const tableArn = (name: string) => `arn:aws:dynamodb:us-east-1:123456789012:table/${name}`;
const role = (name: string) => `arn:aws:iam::123456789012:role/${name}`;

function allow(actions: string[], resources: string[]): NamedPolicy {
  return {
    name: 'inline',
    document: {
      Version: '2012-10-17',
      Statement: [{ Effect: 'Allow', Action: actions, Resource: resources }],
    },
  };
}

const roles = new Map<string, NamedPolicy[]>([
  [
    role('Writer'),
    [
      allow(
        [
          'dynamodb:GetItem',
          'dynamodb:PutItem',
          'dynamodb:UpdateItem',
          'dynamodb:DeleteItem',
          'dynamodb:Query',
          'dynamodb:ConditionCheckItem',
          'dynamodb:BatchGetItem',
        ],
        [tableArn(TABLE), `${tableArn(TABLE)}/index/*`],
      ),
    ],
  ],
  // The reader may read the table itself, not its indexes, and may not write.
  [role('Reader'), [allow(['dynamodb:GetItem', 'dynamodb:Query'], [tableArn(TABLE)])]],
  // Everything a transaction's Put needs, but not the ConditionCheckItem its condition check needs.
  [
    role('NoConditionCheck'),
    [
      allow(
        ['dynamodb:GetItem', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:DeleteItem'],
        [tableArn(TABLE)],
      ),
    ],
  ],
]);

let dynamo: DynamoLocal;
let direct: DynamoDBClient;
let proxy: LocalEndpoint;
const store = new LocalCredentialStore();
const decisions: { request: AuthorizationRequest; allowed: boolean }[] = [];
const clients: DynamoDBClient[] = [];

function clientWith(credentials: LocalAwsCredentials): DynamoDBDocumentClient {
  // maxAttempts 1: a refused request must fail at once, not be retried into a timeout.
  const client = new DynamoDBClient({
    endpoint: proxy.url,
    region: 'us-east-1',
    credentials,
    maxAttempts: 1,
  });
  clients.push(client);
  return DynamoDBDocumentClient.from(client);
}

const clientFor = (roleName: string) => clientWith(store.issue(role(roleName), 'test'));
const directDoc = () => DynamoDBDocumentClient.from(direct);

/** The error a promise rejects with (fails the test when it resolves). */
async function failure(
  promise: Promise<unknown>,
): Promise<Error & { $metadata?: { httpStatusCode?: number } }> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected the call to fail, it succeeded');
}

function item(id: string, extra: Record<string, unknown> = {}) {
  return {
    [TableSchema.partitionKey]: `ITEM#${id}`,
    [TableSchema.sortKey]: 'META',
    [TableSchema.byType.partitionKey]: 'ITEM',
    [TableSchema.byType.sortKey]: `2024-01-01#${id}`,
    ...extra,
  };
}

const key = (id: string) => ({ [TableSchema.partitionKey]: `ITEM#${id}`, [TableSchema.sortKey]: 'META' });

beforeAll(async () => {
  dynamo = await startDynamoLocal();
  direct = new DynamoDBClient(localDynamoClientConfig(dynamo.endpoint));
  await ensureTable(direct, TABLE);
  await direct.send(
    new CreateTableCommand({
      TableName: OTHER,
      BillingMode: 'PAY_PER_REQUEST',
      AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }],
      KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }],
    }),
  );
  const authorizer = new IamAuthorizer({
    roles,
    onDecision: (request, allowed) => decisions.push({ request, allowed }),
  });
  proxy = await startDynamoProxy({ upstream: dynamo.endpoint, credentials: store, authorizer, account });
}, 90_000);

afterAll(async () => {
  for (const client of clients) client.destroy();
  direct?.destroy();
  await proxy?.close();
  await dynamo?.stop();
});

beforeEach(() => {
  decisions.length = 0;
});

describe('startDynamoProxy', () => {
  it('lets the writer put, get and query through the table and its index', async () => {
    const writer = clientFor('Writer');
    await writer.send(new PutCommand({ TableName: TABLE, Item: item('w1', { size: 1 }) }));

    const got = await writer.send(new GetCommand({ TableName: TABLE, Key: key('w1') }));
    expect(got.Item).toEqual(item('w1', { size: 1 }));

    const byTable = await writer.send(
      new QueryCommand({
        TableName: TABLE,
        KeyConditionExpression: 'pk = :pk',
        ExpressionAttributeValues: { ':pk': 'ITEM#w1' },
      }),
    );
    expect(byTable.Items).toEqual([item('w1', { size: 1 })]);

    const byIndex = await writer.send(
      new QueryCommand({
        TableName: TABLE,
        IndexName: TableSchema.byType.indexName,
        KeyConditionExpression: 'gsi1pk = :t AND gsi1sk = :s',
        ExpressionAttributeValues: { ':t': 'ITEM', ':s': '2024-01-01#w1' },
      }),
    );
    expect(byIndex.Items).toEqual([item('w1', { size: 1 })]);

    // The index query was authorized on the index's ARN, not the table's.
    expect(decisions).toContainEqual(
      expect.objectContaining({
        allowed: true,
        request: expect.objectContaining({
          action: 'dynamodb:Query',
          resource: `${tableArn(TABLE)}/index/by-type`,
          principal: expect.objectContaining({ roleArn: role('Writer') }),
        }),
      }),
    );
  });

  it('refuses the reader a PutItem with AccessDeniedException and writes nothing', async () => {
    const reader = clientFor('Reader');
    const error = await failure(reader.send(new PutCommand({ TableName: TABLE, Item: item('r1') })));
    expect(error.name).toBe('AccessDeniedException');
    expect(error.$metadata?.httpStatusCode).toBe(400);
    expect(error.message).toContain('is not authorized to perform: dynamodb:PutItem');
    expect(error.message).toContain(`assumed-role/Reader/test`);

    const after = await directDoc().send(new GetCommand({ TableName: TABLE, Key: key('r1') }));
    expect(after.Item).toBeUndefined();
  });

  it('lets the reader get and query the table but not query an index', async () => {
    await directDoc().send(new PutCommand({ TableName: TABLE, Item: item('r2') }));
    const reader = clientFor('Reader');

    const got = await reader.send(new GetCommand({ TableName: TABLE, Key: key('r2') }));
    expect(got.Item).toEqual(item('r2'));
    const byTable = await reader.send(
      new QueryCommand({
        TableName: TABLE,
        KeyConditionExpression: 'pk = :pk',
        ExpressionAttributeValues: { ':pk': 'ITEM#r2' },
      }),
    );
    expect(byTable.Items).toEqual([item('r2')]);

    const error = await failure(
      reader.send(
        new QueryCommand({
          TableName: TABLE,
          IndexName: TableSchema.byType.indexName,
          KeyConditionExpression: 'gsi1pk = :t',
          ExpressionAttributeValues: { ':t': 'ITEM' },
        }),
      ),
    );
    expect(error.name).toBe('AccessDeniedException');
    expect(error.message).toContain(`${tableArn(TABLE)}/index/by-type`);
  });

  it('checks each member of a transaction: Put as PutItem, ConditionCheck as ConditionCheckItem', async () => {
    await directDoc().send(new PutCommand({ TableName: TABLE, Item: item('guard', { open: true }) }));
    const transaction = (id: string) =>
      new TransactWriteCommand({
        TransactItems: [
          { Put: { TableName: TABLE, Item: item(id) } },
          {
            ConditionCheck: {
              TableName: TABLE,
              Key: key('guard'),
              ConditionExpression: '#open = :yes',
              ExpressionAttributeNames: { '#open': 'open' },
              ExpressionAttributeValues: { ':yes': true },
            },
          },
        ],
      });

    await clientFor('Writer').send(transaction('t1'));
    const written = await directDoc().send(new GetCommand({ TableName: TABLE, Key: key('t1') }));
    expect(written.Item).toEqual(item('t1'));

    const error = await failure(clientFor('NoConditionCheck').send(transaction('t2')));
    expect(error.name).toBe('AccessDeniedException');
    expect(error.message).toContain('dynamodb:ConditionCheckItem');
    const notWritten = await directDoc().send(new GetCommand({ TableName: TABLE, Key: key('t2') }));
    expect(notWritten.Item).toBeUndefined();
    // The Put was evaluated (and allowed) before the condition check was refused.
    expect(decisions).toContainEqual(
      expect.objectContaining({
        allowed: true,
        request: expect.objectContaining({
          action: 'dynamodb:PutItem',
          principal: expect.objectContaining({ roleArn: role('NoConditionCheck') }),
        }),
      }),
    );
  });

  it('checks BatchGetItem on every table of the batch', async () => {
    await directDoc().send(new PutCommand({ TableName: TABLE, Item: item('b1') }));
    await directDoc().send(new PutCommand({ TableName: TABLE, Item: item('b2') }));
    const writer = clientFor('Writer');

    const out = await writer.send(
      new BatchGetCommand({ RequestItems: { [TABLE]: { Keys: [key('b1'), key('b2'), key('missing')] } } }),
    );
    const ids = (out.Responses?.[TABLE] ?? []).map((i) => i[TableSchema.partitionKey]).sort();
    expect(ids).toEqual(['ITEM#b1', 'ITEM#b2']);

    const bothTables = await failure(
      writer.send(
        new BatchGetCommand({
          RequestItems: { [TABLE]: { Keys: [key('b1')] }, [OTHER]: { Keys: [{ pk: 'x' }] } },
        }),
      ),
    );
    expect(bothTables.name).toBe('AccessDeniedException');
    expect(bothTables.message).toContain(`dynamodb:BatchGetItem on resource: ${tableArn(OTHER)}`);

    // GetItem does not grant BatchGetItem.
    const reader = await failure(
      clientFor('Reader').send(new BatchGetCommand({ RequestItems: { [TABLE]: { Keys: [key('b1')] } } })),
    );
    expect(reader.name).toBe('AccessDeniedException');
  });

  it('refuses a wrong secret and an unknown access key with the signature errors', async () => {
    const issued = store.issue(role('Writer'), 'test');
    const wrongSecret = await failure(
      clientWith({ ...issued, secretAccessKey: 'not-the-secret' }).send(
        new GetCommand({ TableName: TABLE, Key: key('w1') }),
      ),
    );
    expect(wrongSecret.name).toBe('InvalidSignatureException');
    expect(wrongSecret.$metadata?.httpStatusCode).toBe(400);

    const unknownKey = await failure(
      clientWith({ ...issued, accessKeyId: 'ASIANOTISSUED0000000' }).send(
        new GetCommand({ TableName: TABLE, Key: key('w1') }),
      ),
    );
    expect(unknownKey.name).toBe('UnrecognizedClientException');
    // Nothing was evaluated: the signature is checked first.
    expect(decisions).toEqual([]);
  });

  it('answers an unsigned request with MissingAuthenticationTokenException', async () => {
    const response = await fetch(proxy.url, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-amz-json-1.0',
        'x-amz-target': 'DynamoDB_20120810.ListTables',
      },
      body: '{}',
    });
    expect(response.status).toBe(400);
    expect(response.headers.get('content-type')).toBe('application/x-amz-json-1.0');
    expect(await response.json()).toEqual({
      __type: 'com.amazon.coral.service#MissingAuthenticationTokenException',
      message: expect.any(String),
    });
  });

  it('refuses operations it has no IAM mapping for instead of forwarding them', async () => {
    const writer = clientFor('Writer');
    const error = await failure(
      writer.send(
        new ExecuteStatementCommand({
          Statement: `INSERT INTO "${TABLE}" VALUE {'pk': 'ITEM#partiql', 'sk': 'META'}`,
        }),
      ),
    );
    expect(error.name).toBe('UnknownOperationException');
    const after = await directDoc().send(new GetCommand({ TableName: TABLE, Key: key('partiql') }));
    expect(after.Item).toBeUndefined();
  });

  it('passes DynamoDB Local errors back unchanged', async () => {
    await directDoc().send(new PutCommand({ TableName: TABLE, Item: item('c1', { v: 1 }) }));
    const conditional = {
      TableName: TABLE,
      Item: { pk: { S: 'ITEM#c1' }, sk: { S: 'META' }, v: { N: '2' } },
      ConditionExpression: 'attribute_not_exists(pk)',
      ReturnValuesOnConditionCheckFailure: 'ALL_OLD' as const,
    };
    const writer = clientFor('Writer');

    const viaProxy = await failure(writer.send(new PutItemCommand(conditional)));
    const viaDirect = await failure(direct.send(new PutItemCommand(conditional)));
    expect(viaProxy.name).toBe('ConditionalCheckFailedException');
    expect(viaProxy.message).toBe(viaDirect.message);
    expect(viaProxy.$metadata?.httpStatusCode).toBe(viaDirect.$metadata?.httpStatusCode);
    // The body came through whole: the old item DynamoDB Local returned with the failure.
    expect((viaProxy as unknown as { Item?: unknown }).Item).toEqual(
      (viaDirect as unknown as { Item?: unknown }).Item,
    );
    expect((viaProxy as unknown as { Item?: unknown }).Item).toMatchObject({ v: { N: '1' } });

    // An update that fails its condition is a 400 from DynamoDB Local, not an AccessDenied.
    const update = await failure(
      writer.send(
        new UpdateCommand({
          TableName: TABLE,
          Key: key('c1'),
          UpdateExpression: 'SET v = :n',
          ConditionExpression: 'v = :old',
          ExpressionAttributeValues: { ':n': 3, ':old': 99 },
        }),
      ),
    );
    expect(update.name).toBe('ConditionalCheckFailedException');
  });

  it('checks ListTables on "*", which no role here is granted', async () => {
    const error = await failure(clientFor('Writer').send(new ListTablesCommand({})));
    expect(error.name).toBe('AccessDeniedException');
    expect(error.message).toContain('dynamodb:ListTables on resource: *');
  });
});

describe('dynamoAuthorizations', () => {
  const t = tableArn(TABLE);
  const o = tableArn(OTHER);
  const cases: [string, Record<string, unknown>, { action: string; resource: string }[]][] = [
    ['GetItem', { TableName: TABLE, Key: {} }, [{ action: 'dynamodb:GetItem', resource: t }]],
    ['PutItem', { TableName: TABLE }, [{ action: 'dynamodb:PutItem', resource: t }]],
    ['UpdateItem', { TableName: TABLE }, [{ action: 'dynamodb:UpdateItem', resource: t }]],
    ['DeleteItem', { TableName: TABLE }, [{ action: 'dynamodb:DeleteItem', resource: t }]],
    ['DescribeTable', { TableName: TABLE }, [{ action: 'dynamodb:DescribeTable', resource: t }]],
    ['CreateTable', { TableName: TABLE }, [{ action: 'dynamodb:CreateTable', resource: t }]],
    ['DeleteTable', { TableName: TABLE }, [{ action: 'dynamodb:DeleteTable', resource: t }]],
    ['UpdateTable', { TableName: TABLE }, [{ action: 'dynamodb:UpdateTable', resource: t }]],
    ['DescribeTimeToLive', { TableName: TABLE }, [{ action: 'dynamodb:DescribeTimeToLive', resource: t }]],
    ['UpdateTimeToLive', { TableName: TABLE }, [{ action: 'dynamodb:UpdateTimeToLive', resource: t }]],
    ['GetItem', { TableName: t }, [{ action: 'dynamodb:GetItem', resource: t }]],
    ['Query', { TableName: TABLE }, [{ action: 'dynamodb:Query', resource: t }]],
    [
      'Query',
      { TableName: TABLE, IndexName: 'by-type' },
      [{ action: 'dynamodb:Query', resource: `${t}/index/by-type` }],
    ],
    ['Scan', { TableName: TABLE }, [{ action: 'dynamodb:Scan', resource: t }]],
    [
      'Scan',
      { TableName: TABLE, IndexName: 'by-lease' },
      [{ action: 'dynamodb:Scan', resource: `${t}/index/by-lease` }],
    ],
    [
      'BatchGetItem',
      { RequestItems: { [TABLE]: { Keys: [] }, [OTHER]: { Keys: [] } } },
      [
        { action: 'dynamodb:BatchGetItem', resource: t },
        { action: 'dynamodb:BatchGetItem', resource: o },
      ],
    ],
    [
      'BatchWriteItem',
      { RequestItems: { [OTHER]: [{ PutRequest: {} }, { DeleteRequest: {} }] } },
      [{ action: 'dynamodb:BatchWriteItem', resource: o }],
    ],
    [
      'TransactWriteItems',
      {
        TransactItems: [
          { Put: { TableName: TABLE } },
          { Update: { TableName: TABLE } },
          { Delete: { TableName: OTHER } },
          { ConditionCheck: { TableName: TABLE } },
          { Put: { TableName: TABLE } },
        ],
      },
      [
        { action: 'dynamodb:PutItem', resource: t },
        { action: 'dynamodb:UpdateItem', resource: t },
        { action: 'dynamodb:DeleteItem', resource: o },
        { action: 'dynamodb:ConditionCheckItem', resource: t },
      ],
    ],
    [
      'TransactGetItems',
      {
        TransactItems: [
          { Get: { TableName: TABLE } },
          { Get: { TableName: OTHER } },
          { Get: { TableName: TABLE } },
        ],
      },
      [
        { action: 'dynamodb:GetItem', resource: t },
        { action: 'dynamodb:GetItem', resource: o },
      ],
    ],
    ['ListTables', {}, [{ action: 'dynamodb:ListTables', resource: '*' }]],
  ];

  it.each(cases)('%s %j', (operation, input, expected) => {
    expect(dynamoAuthorizations(operation, input, account)).toEqual(expected);
  });

  it('builds the ARN from the account', () => {
    const other: LocalAccount = { accountId: '000000000000', region: 'eu-west-1', partition: 'aws' };
    expect(dynamoAuthorizations('GetItem', { TableName: 'x' }, other)).toEqual([
      { action: 'dynamodb:GetItem', resource: 'arn:aws:dynamodb:eu-west-1:000000000000:table/x' },
    ]);
  });

  it.each([
    'ExecuteStatement',
    'BatchExecuteStatement',
    'ExecuteTransaction',
    'CreateBackup',
    'TagResource',
    'constructor',
    '',
  ])('refuses %j as UnknownOperationException', (operation) => {
    expect(() => dynamoAuthorizations(operation, { TableName: TABLE }, account)).toThrow(
      expect.objectContaining({ code: 'UnknownOperationException' }),
    );
  });

  it.each<[string, Record<string, unknown>]>([
    ['GetItem', {}],
    ['PutItem', { TableName: '' }],
    ['Query', { TableName: 42 }],
    ['Query', { TableName: TABLE, IndexName: '' }],
    ['BatchGetItem', {}],
    ['BatchGetItem', { RequestItems: {} }],
    ['BatchWriteItem', { RequestItems: [] }],
    ['TransactWriteItems', { TransactItems: [] }],
    ['TransactWriteItems', { TransactItems: [{}] }],
    ['TransactWriteItems', { TransactItems: [{ Put: { TableName: TABLE }, Delete: { TableName: TABLE } }] }],
    ['TransactWriteItems', { TransactItems: [{ Put: {} }] }],
    ['TransactGetItems', { TransactItems: [{ Get: {} }] }],
    ['TransactGetItems', { TransactItems: 'x' }],
  ])('refuses malformed %s %j as ValidationException', (operation, input) => {
    expect(() => dynamoAuthorizations(operation, input, account)).toThrow(
      expect.objectContaining({ code: 'ValidationException' }),
    );
  });
});
