/**
 * The embedded stack's DynamoDB endpoint: an authorizing proxy in front of DynamoDB Local. DynamoDB
 * Local accepts any credentials and checks no permissions, so without this a Lambda bundle whose role
 * lacks an action would pass locally and fail on AWS. Each request (AWS JSON 1.0, `POST /` with
 * `X-Amz-Target: DynamoDB_20120810.<Op>`) is SigV4-verified against the local credentials, every IAM
 * action it needs is evaluated against the signing role's synthesized policies, and only then is it
 * forwarded, headers and body unchanged, to DynamoDB Local; the answer comes back verbatim, so the
 * SDK sees DynamoDB's own errors (ConditionalCheckFailedException, …) exactly as DynamoDB Local
 * produced them.
 *
 * Operations the proxy has no IAM mapping for (PartiQL, backups, streams, tagging, …) are refused
 * rather than forwarded unchecked. Condition keys (`dynamodb:LeadingKeys`, `dynamodb:Attributes`)
 * are not supplied to the evaluator: Strata's policies do not use them.
 */
import http from 'node:http';
import https from 'node:https';
import type { Logger } from '../../../drivers/sdk/types.js';
import { AwsServiceError, type LocalEndpoint, listen, type RequestTap, readBody } from './aws-server.js';
import { AccessDeniedError, type IamAuthorizer } from './iam-authorizer.js';
import type { LocalAccount, LocalCredentialStore } from './principals.js';
import { SignatureError, verifySignature } from './sigv4-verify.js';

export interface DynamoProxyOptions {
  /** The DynamoDB Local endpoint, e.g. `http://127.0.0.1:8000`. */
  upstream: string;
  credentials: LocalCredentialStore;
  authorizer: IamAuthorizer;
  /** Table ARNs are built from it: `arn:aws:dynamodb:<region>:<accountId>:table/<name>`. */
  account: LocalAccount;
  /** Crash points (the crash matrix); absent in `npm start`. */
  faults?: RequestTap;
  logger?: Logger;
  /** 0 or absent picks a free port. */
  port?: number;
}

/** One IAM check: the action and the ARN it is on. */
export interface DynamoAuthorization {
  action: string;
  resource: string;
}

const TARGET_PREFIX = 'DynamoDB_20120810';
const CONTENT_TYPE = 'application/x-amz-json-1.0';
/** The namespaces DynamoDB puts in `__type`; the SDK keeps only the part after `#`. */
const DYNAMODB_NAMESPACE = 'com.amazonaws.dynamodb.v20120810';
const CORAL_NAMESPACE = 'com.amazon.coral.service';

/** Operations on one table (named by `TableName`) whose IAM action is the operation's own name. */
const SINGLE_TABLE_OPERATIONS = new Set([
  'GetItem',
  'PutItem',
  'UpdateItem',
  'DeleteItem',
  'DescribeTable',
  'CreateTable',
  'DeleteTable',
  'UpdateTable',
  'DescribeTimeToLive',
  'UpdateTimeToLive',
]);

/** Which IAM action each member of a TransactWriteItems entry is checked as. */
const TRANSACT_WRITE_ACTIONS = {
  Put: 'dynamodb:PutItem',
  Update: 'dynamodb:UpdateItem',
  Delete: 'dynamodb:DeleteItem',
  ConditionCheck: 'dynamodb:ConditionCheckItem',
} as const;

/**
 * Headers that describe one connection, not the request (RFC 9110 §7.6.1), plus `host`, which names
 * the proxy. `expect` goes too: the body has already been read in full.
 */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'expect',
]);

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function validation(message: string): AwsServiceError {
  return new AwsServiceError('ValidationException', message);
}

/** A table's ARN. DynamoDB also accepts a full table ARN wherever it takes a table name. */
function tableArn(name: unknown, account: LocalAccount, where: string): string {
  if (typeof name !== 'string' || name === '') throw validation(`${where} requires a TableName`);
  if (name.startsWith('arn:')) return name;
  return `arn:${account.partition}:dynamodb:${account.region}:${account.accountId}:table/${name}`;
}

/** The tables a BatchGetItem or BatchWriteItem names (the keys of `RequestItems`). */
function requestItemTables(operation: string, input: Record<string, unknown>): string[] {
  const items = input.RequestItems;
  if (!isRecord(items)) throw validation(`${operation} requires RequestItems`);
  return Object.keys(items);
}

/** The entries of a TransactWriteItems or TransactGetItems. */
function transactItems(operation: string, input: Record<string, unknown>): Record<string, unknown>[] {
  const items = input.TransactItems;
  if (!Array.isArray(items) || !items.every(isRecord)) {
    throw validation(`${operation} requires TransactItems, a list of objects`);
  }
  return items;
}

/**
 * The IAM checks one DynamoDB request needs, deduplicated, in request order. Pure: it only reads
 * `input`. Throws an {@link AwsServiceError}: `UnknownOperationException` for an operation it has no
 * mapping for (such a request must not be forwarded unchecked), `ValidationException` for input
 * that names no table (DynamoDB would refuse it too, and nothing unchecked may pass).
 *
 * @example
 * dynamoAuthorizations('Query', { TableName: 'strata', IndexName: 'by-type' }, account);
 * // [{ action: 'dynamodb:Query', resource: 'arn:aws:dynamodb:us-east-1:000000000000:table/strata/index/by-type' }]
 */
export function dynamoAuthorizations(
  operation: string,
  input: Record<string, unknown>,
  account: LocalAccount,
): DynamoAuthorization[] {
  const checks: DynamoAuthorization[] = [];
  const add = (action: string, resource: string) => {
    if (!checks.some((c) => c.action === action && c.resource === resource))
      checks.push({ action, resource });
  };

  if (SINGLE_TABLE_OPERATIONS.has(operation)) {
    add(`dynamodb:${operation}`, tableArn(input.TableName, account, operation));
  } else if (operation === 'Query' || operation === 'Scan') {
    const table = tableArn(input.TableName, account, operation);
    const index = input.IndexName;
    if (index !== undefined && (typeof index !== 'string' || index === '')) {
      throw validation(`${operation}: IndexName must be a non-empty string`);
    }
    // Reading an index is authorized on the index's own ARN, not the table's.
    add(`dynamodb:${operation}`, index === undefined ? table : `${table}/index/${index}`);
  } else if (operation === 'BatchGetItem' || operation === 'BatchWriteItem') {
    for (const table of requestItemTables(operation, input)) {
      add(`dynamodb:${operation}`, tableArn(table, account, operation));
    }
  } else if (operation === 'TransactWriteItems') {
    // IAM checks a transaction as its members: each is authorized as the single-item action it is.
    for (const [i, item] of transactItems(operation, input).entries()) {
      const kinds = Object.keys(TRANSACT_WRITE_ACTIONS).filter((k) => item[k] !== undefined) as Array<
        keyof typeof TRANSACT_WRITE_ACTIONS
      >;
      const [kind] = kinds;
      if (kind === undefined || kinds.length > 1) {
        throw validation(
          `${operation}: TransactItems[${i}] must hold exactly one of Put, Update, Delete, ConditionCheck`,
        );
      }
      const member = item[kind];
      const table = isRecord(member) ? member.TableName : undefined;
      add(TRANSACT_WRITE_ACTIONS[kind], tableArn(table, account, `${operation} TransactItems[${i}].${kind}`));
    }
  } else if (operation === 'TransactGetItems') {
    for (const [i, item] of transactItems(operation, input).entries()) {
      const get = item.Get;
      const table = isRecord(get) ? get.TableName : undefined;
      add('dynamodb:GetItem', tableArn(table, account, `${operation} TransactItems[${i}].Get`));
    }
  } else if (operation === 'ListTables') {
    // ListTables has no resource-level permissions.
    add('dynamodb:ListTables', '*');
  } else {
    throw new AwsServiceError(
      'UnknownOperationException',
      `${TARGET_PREFIX}.${operation} is not served locally`,
    );
  }

  // A batch or transaction with no members touches nothing we could check; DynamoDB refuses it too.
  if (checks.length === 0) throw validation(`${operation} names no table`);
  return checks;
}

/** The `__type` DynamoDB answers a refused signature with (its codes differ from the generic ones). */
function signatureErrorType(code: SignatureError['code']): string {
  switch (code) {
    case 'MissingAuthenticationToken':
      return 'MissingAuthenticationTokenException';
    case 'IncompleteSignature':
      return 'IncompleteSignatureException';
    case 'ExpiredToken':
      return 'ExpiredTokenException';
    case 'InvalidClientTokenId':
      return 'UnrecognizedClientException';
    // DynamoDB reports a skewed clock and a mismatched scope as a bad signature; the SDK corrects
    // its clock offset on InvalidSignatureException.
    case 'RequestExpired':
    case 'SignatureDoesNotMatch':
      return 'InvalidSignatureException';
    default:
      return code;
  }
}

/** Maps a failure before or while forwarding to DynamoDB's JSON 1.0 error. */
function dynamoError(error: unknown): { status: number; type: string; message: string } {
  if (error instanceof AccessDeniedError) {
    return { status: 400, type: `${DYNAMODB_NAMESPACE}#AccessDeniedException`, message: error.message };
  }
  if (error instanceof SignatureError) {
    return {
      status: 400,
      type: `${CORAL_NAMESPACE}#${signatureErrorType(error.code)}`,
      message: error.message,
    };
  }
  if (error instanceof AwsServiceError) {
    return { status: error.status, type: `${CORAL_NAMESPACE}#${error.code}`, message: error.message };
  }
  const message = error instanceof Error ? error.message : String(error);
  // 500 InternalServerError is retried by the SDK, as it would be against DynamoDB.
  return { status: 500, type: `${DYNAMODB_NAMESPACE}#InternalServerError`, message };
}

/** The end-to-end headers of a message: hop-by-hop ones dropped, and those its `Connection` names. */
function endToEnd(headers: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const named = new Set(
    String(headers.connection ?? '')
      .split(',')
      .map((h) => h.trim().toLowerCase())
      .filter(Boolean),
  );
  const out: http.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || named.has(name)) continue;
    out[name] = value;
  }
  return out;
}

/**
 * Starts the proxy on 127.0.0.1 and resolves with its URL (for `AWS_ENDPOINT_URL_DYNAMODB`).
 *
 * @example
 * const proxy = await startDynamoProxy({ upstream: dynamo.endpoint, credentials, authorizer, account });
 * const client = new DynamoDBClient({ endpoint: proxy.url, region: 'us-east-1', credentials: roleCredentials });
 * // ...
 * await proxy.close();
 */
export async function startDynamoProxy(options: DynamoProxyOptions): Promise<LocalEndpoint> {
  const upstream = new URL(options.upstream);
  if (upstream.protocol !== 'http:' && upstream.protocol !== 'https:') {
    throw new Error(`the DynamoDB upstream must be an http(s) URL, not ${options.upstream}`);
  }
  const transport = upstream.protocol === 'https:' ? https : http;
  // Keep-alive to DynamoDB Local: every Lambda call would otherwise pay a new connection.
  const agent = new transport.Agent({ keepAlive: true });

  const forward = (req: http.IncomingMessage, body: Buffer, res: http.ServerResponse): Promise<void> =>
    new Promise((resolve, reject) => {
      const headers = endToEnd(req.headers);
      delete headers.host;
      // The body was read whole; whatever framing the client used, it goes on with a length.
      headers['content-length'] = body.length;
      const outgoing = transport.request(
        {
          protocol: upstream.protocol,
          hostname: upstream.hostname,
          port: upstream.port,
          method: req.method,
          path: req.url ?? '/',
          headers,
          agent,
        },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.statusMessage, endToEnd(answer.headers));
          answer.pipe(res);
          answer.on('end', () => resolve());
          // Headers are already out: all that is left is to cut the connection so the client sees it.
          answer.on('error', (error) => {
            res.destroy(error);
            resolve();
          });
        },
      );
      outgoing.on('error', reject);
      outgoing.end(body);
    });

  const server = http.createServer((req, res) => {
    const refuse = (error: unknown, fields: Record<string, unknown>) => {
      const { status, type, message } = dynamoError(error);
      if (status >= 500) options.logger?.error('local DynamoDB proxy failed', { ...fields, error: message });
      else if (error instanceof AccessDeniedError)
        options.logger?.warn('DynamoDB request denied', { ...fields, message });
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const text = JSON.stringify({ __type: type, message });
      res.writeHead(status, { 'content-type': CONTENT_TYPE, 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    let operation = '';
    void (async () => {
      try {
        const body = await readBody(req);
        // The signature first: an unauthenticated caller learns nothing about what is served.
        const caller = verifySignature(
          { method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers, body },
          options.credentials,
          { service: 'dynamodb' },
        );
        const target = String(req.headers['x-amz-target'] ?? '');
        const dot = target.indexOf('.');
        operation = dot < 0 ? '' : target.slice(dot + 1);
        if (req.method !== 'POST' || target.slice(0, dot) !== TARGET_PREFIX || operation === '') {
          throw new AwsServiceError('UnknownOperationException', `unknown operation ${target || '(none)'}`);
        }
        let input: unknown;
        try {
          input = body.length ? JSON.parse(body.toString('utf8')) : {};
        } catch {
          throw new AwsServiceError('SerializationException', 'the request body is not JSON');
        }
        if (!isRecord(input))
          throw new AwsServiceError('SerializationException', 'the request body is not a JSON object');
        const checks = dynamoAuthorizations(operation, input, options.account);
        await options.authorizer.authorizeAll(
          checks.map((check) => ({ principal: caller.principal, ...check })),
        );
        if (await options.faults?.onRequest(caller.principal, 'dynamodb', operation, caller.presigned)) {
          res.destroy();
          return;
        }
        await forward(req, body, res);
      } catch (error) {
        refuse(error, { operation });
      }
    })();
  });

  const endpoint = await listen(server, options.port);
  return {
    url: endpoint.url,
    close: async () => {
      await endpoint.close();
      agent.destroy();
    },
  };
}
