/**
 * The embedded stack's API Gateway: serves the synthesized REST API's methods (resource path +
 * method → integration) on a plain node:http server, turns each request into the proxy event API
 * Gateway gives a Lambda integration, and invokes the integration's function. A path or method the
 * API does not define is refused as API Gateway refuses it, so a route that is not deployed is not
 * served locally either.
 *
 * Callers authenticate with a bearer token per API caller role (api-tokens.ts) instead of SigV4;
 * each request is then authorized as API Gateway's IAM authorization does it: `execute-api:Invoke`
 * on the method ARN (`arn:aws:execute-api:<region>:<account>:<api>/<stage>/<METHOD><path>`),
 * evaluated against the synthesized policy of the token's role. No token: 401 (GET /health
 * excepted, a liveness probe); not allowed: 403 AccessDenied. No CORS header is ever sent, so a
 * browser's preflight for a cross-site request (which the Authorization header forces) fails.
 *
 * Other differences from API Gateway: no stage prefix in the path (the stage is in the event), and
 * plain HTTP on loopback.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { APIGatewayProxyEvent } from 'aws-lambda';
import { InputError } from '../../functions/core/errors.js';
import { pathProblem } from '../../functions/handlers/api/router.js';
import { errorResponse } from '../../functions/handlers/http.js';
import type { ApiCallerRole } from '../aws/constructs/api-callers.js';
import { type ApiTokens, bearerToken, roleOfToken } from './api-tokens.js';
import type { LocalApi, LocalApiMethod } from './assembly/deployment.js';
import { AccessDeniedError, type IamAuthorizer } from './aws/iam-authorizer.js';
import type { Principal } from './aws/principals.js';

/** API Gateway's payload limit for REST APIs. */
const MAX_PAYLOAD_BYTES = 10 * 1024 * 1024;
/** API Gateway's integration timeout. */
const INTEGRATION_TIMEOUT_MS = 29_000;

export interface LocalApiServer {
  url: string;
  close(): Promise<void>;
}

/** Who may call the API: a token per caller role, the role's session, and the policy evaluator. */
export interface LocalApiAuth {
  tokens: ApiTokens;
  principals: Record<ApiCallerRole, Principal>;
  authorizer: IamAuthorizer;
  region: string;
}

export interface LocalApiServerOptions {
  api: LocalApi;
  accountId: string;
  auth: LocalApiAuth;
  /** Invokes an integration's function; rejects when the function fails. */
  invoke: (functionArn: string, event: APIGatewayProxyEvent) => Promise<unknown>;
  port: number;
}

interface Match {
  method: LocalApiMethod;
  pathParameters: Record<string, string> | null;
}

/** Finds the method a request path and HTTP method reach, as API Gateway's resource tree does. */
export function matchRoute(
  methods: readonly LocalApiMethod[],
  httpMethod: string,
  path: string,
): Match | undefined {
  const segments = path.split('/').filter(Boolean);
  let best: { match: Match; score: number } | undefined;
  for (const method of methods) {
    if (method.httpMethod !== 'ANY' && method.httpMethod !== httpMethod) continue;
    const parts = method.path.split('/').filter(Boolean);
    const params: Record<string, string> = {};
    let ok = true;
    let score = 0;
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i]!;
      const greedy = /^\{(.+)\+\}$/.exec(part);
      if (greedy) {
        if (i >= segments.length) ok = false;
        else params[greedy[1]!] = segments.slice(i).join('/');
        i = parts.length;
        break;
      }
      const segment = segments[i];
      if (segment === undefined) {
        ok = false;
        break;
      }
      const named = /^\{(.+)\}$/.exec(part);
      if (named) params[named[1]!] = segment;
      else if (part !== segment) ok = false;
      else score += 2;
      score += 1;
      if (!ok) break;
    }
    const greedyLast = parts.length > 0 && /^\{.+\+\}$/.test(parts[parts.length - 1]!);
    if (ok && !greedyLast && parts.length !== segments.length) ok = false;
    if (!ok) continue;
    if (method.httpMethod !== 'ANY') score += 1;
    if (!best || score > best.score) {
      best = { match: { method, pathParameters: Object.keys(params).length ? params : null }, score };
    }
  }
  return best?.match;
}

function toEvent(
  req: http.IncomingMessage,
  body: Buffer,
  match: Match,
  api: LocalApi,
  accountId: string,
  principal: Principal | undefined,
): APIGatewayProxyEvent {
  const url = new URL(req.url ?? '/', 'http://local');
  // Null-prototype maps: a query name or header such as `__proto__` or `constructor` is data here.
  const headers: Record<string, string> = Object.create(null);
  const multiValueHeaders: Record<string, string[]> = Object.create(null);
  for (const [k, v] of Object.entries(req.headers)) {
    if (v === undefined) continue;
    headers[k] = Array.isArray(v) ? v.join(',') : v;
    multiValueHeaders[k] = Array.isArray(v) ? v : [v];
  }
  const query: Record<string, string> = Object.create(null);
  const multiQuery: Record<string, string[]> = Object.create(null);
  for (const [k, v] of url.searchParams) {
    query[k] = v;
    multiQuery[k] = [...(multiQuery[k] ?? []), v];
  }
  const requestId = randomUUID();
  return {
    httpMethod: req.method ?? 'GET',
    path: url.pathname,
    resource: match.method.path,
    headers,
    multiValueHeaders,
    queryStringParameters: Object.keys(query).length ? query : null,
    multiValueQueryStringParameters: Object.keys(multiQuery).length ? multiQuery : null,
    pathParameters: match.pathParameters,
    stageVariables: null,
    body: body.length ? body.toString('utf8') : null,
    isBase64Encoded: false,
    requestContext: {
      accountId,
      apiId: api.restApiId,
      stage: api.stageName,
      httpMethod: req.method ?? 'GET',
      path: `/${api.stageName}${url.pathname}`,
      resourcePath: match.method.path,
      resourceId: 'local',
      requestId,
      requestTimeEpoch: Date.now(),
      protocol: 'HTTP/1.1',
      // As API Gateway fills it in for an IAM-authorized caller: the role session that called.
      // Idempotency-Key records are scoped by userArn, so each caller role has its own keys.
      identity: {
        accountId: principal?.accountId ?? null,
        caller: principal ? `${principal.roleName}:${principal.sessionName}` : null,
        user: principal ? `${principal.roleName}:${principal.sessionName}` : null,
        userArn: principal?.arn ?? null,
        sourceIp: req.socket.remoteAddress ?? '127.0.0.1',
        userAgent: headers['user-agent'] ?? null,
      },
    } as unknown as APIGatewayProxyEvent['requestContext'],
  };
}

function send(
  res: http.ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'x-amzn-requestid': randomUUID(), ...headers });
  res.end(text);
}

/** Serves the API on 127.0.0.1:`port` (0 picks a free port). */
export async function startLocalApiServer(options: LocalApiServerOptions): Promise<LocalApiServer> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_PAYLOAD_BYTES && !refused) {
        refused = true;
        send(res, 413, { message: 'Request Too Long' }, { connection: 'close' });
        req.destroy();
        return;
      }
      if (!refused) chunks.push(chunk);
    });
    req.on('end', () => {
      if (refused) return;
      try {
        serve();
      } catch {
        // A defect of this server must still answer (API Gateway's answer to its own failure).
        if (!res.headersSent) send(res, 500, { message: 'Internal server error' });
      }
    });
    const serve = () => {
      // Before the URL parser normalizes it: `/volumes/v/access/..` must not become `/volumes/v`.
      const problem = pathProblem((req.url ?? '/').split('?')[0] ?? '/');
      if (problem) {
        const refusal = errorResponse(new InputError(problem, { field: 'path' }), () => undefined);
        send(res, refusal.statusCode, JSON.parse(refusal.body) as unknown);
        return;
      }
      const path = new URL(req.url ?? '/', 'http://local').pathname;
      const httpMethod = (req.method ?? 'GET').toUpperCase();
      const presented = bearerToken(req.headers.authorization);
      const role = presented === undefined ? undefined : roleOfToken(options.auth.tokens, presented);
      const liveness = httpMethod === 'GET' && path === '/health' && req.headers.authorization === undefined;
      if (!role && !liveness) {
        send(
          res,
          401,
          {
            error: {
              code: 'Unauthorized',
              message:
                presented === undefined
                  ? 'missing Authorization: Bearer <token> (the tokens are in api-tokens.json in the data directory)'
                  : 'the bearer token is not valid (the stack writes new ones to api-tokens.json on every start)',
            },
          },
          { 'www-authenticate': 'Bearer realm="strata"' },
        );
        return;
      }
      const principal = role ? options.auth.principals[role] : undefined;
      const match = matchRoute(options.api.methods, httpMethod, path);
      if (!match) {
        send(
          res,
          403,
          { message: 'Missing Authentication Token' },
          { 'x-amzn-errortype': 'MissingAuthenticationTokenException' },
        );
        return;
      }
      const functionArn = match.method.functionArn;
      if (!functionArn) {
        send(res, 500, { message: 'Internal server error' });
        return;
      }
      const event = toEvent(req, Buffer.concat(chunks), match, options.api, options.accountId, principal);
      const methodArn =
        `arn:aws:execute-api:${options.auth.region}:${options.accountId}:${options.api.restApiId}/` +
        `${options.api.stageName}/${httpMethod}${path}`;
      const authorized = principal
        ? options.auth.authorizer.authorize({ principal, action: 'execute-api:Invoke', resource: methodArn })
        : Promise.resolve();
      authorized.then(
        () => invokeIntegration(functionArn, event),
        (e: unknown) => {
          if (!(e instanceof AccessDeniedError)) {
            send(res, 500, { message: 'Internal server error' });
            return;
          }
          send(res, 403, { error: { code: 'AccessDenied', message: e.message } });
        },
      );
    };
    const invokeIntegration = (functionArn: string, event: APIGatewayProxyEvent) => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), INTEGRATION_TIMEOUT_MS);
      });
      Promise.race([options.invoke(functionArn, event), timeout])
        .then((result) => {
          if (result === 'timeout') {
            send(res, 504, { message: 'Endpoint request timed out' });
            return;
          }
          const proxy = result as {
            statusCode?: number;
            headers?: Record<string, string>;
            body?: string;
            isBase64Encoded?: boolean;
          } | null;
          if (!proxy || typeof proxy.statusCode !== 'number') {
            // API Gateway's answer to a malformed Lambda proxy response.
            send(res, 502, { message: 'Internal server error' });
            return;
          }
          res.writeHead(proxy.statusCode, proxy.headers ?? {});
          res.end(
            proxy.isBase64Encoded && proxy.body ? Buffer.from(proxy.body, 'base64') : (proxy.body ?? ''),
          );
        })
        .catch(() => send(res, 502, { message: 'Internal server error' }))
        .finally(() => clearTimeout(timer));
    };
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
