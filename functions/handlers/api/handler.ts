/**
 * The API function: one Lambda behind API Gateway's `{proxy+}`, and the same function behind the
 * embedded stack's local HTTP server. Errors are mapped once, in the middy onError below.
 */
import middy from '@middy/core';
import type { APIGatewayProxyEvent, APIGatewayProxyResult } from 'aws-lambda';
import type { Logger } from '../../../drivers/sdk/types.js';
import { InputError, PayloadTooLargeError, UnsupportedMediaTypeError } from '../../core/errors.js';
import type { Strata } from '../../core/strata.js';
import { errorResponse, inputErrorFromZod, json } from '../http.js';
import { IdempotencyStore, type StoredResponse } from './idempotency.js';
import { buildOpenApi } from './openapi.js';
import { MethodNotAllowedError, Router } from './router.js';
import { type ApiContext, routeDocs, routes } from './routes.js';
import { IdempotencyKeyHeader } from './schemas.js';

/** Bodies are small JSON documents; images never pass through the API (presigned URLs do that). */
export const MAX_BODY_BYTES = 64 * 1024;

export interface ApiHandlerOptions {
  getStrata: () => Promise<Strata> | Strata;
  logger: Logger;
  version?: string;
}

function header(event: APIGatewayProxyEvent, name: string): string | undefined {
  const wanted = name.toLowerCase();
  for (const [k, v] of Object.entries(event.headers ?? {}))
    if (k.toLowerCase() === wanted && v !== undefined) return v;
  return undefined;
}

/**
 * A body comes as application/json, or not at all: a browser sends text/plain or a form to any site
 * without asking first, and JSON under those types must not act on the API.
 */
function readBody(event: APIGatewayProxyEvent): { raw: string; parsed: unknown } {
  if (!event.body) return { raw: '', parsed: undefined };
  const type = (header(event, 'content-type') ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/json') {
    throw new UnsupportedMediaTypeError(
      `a request body must be application/json${type ? `, not ${type.slice(0, 100)}` : ''}`,
      { field: 'content-type' },
    );
  }
  const raw = event.isBase64Encoded ? Buffer.from(event.body, 'base64').toString('utf8') : event.body;
  if (Buffer.byteLength(raw, 'utf8') > MAX_BODY_BYTES) {
    throw new PayloadTooLargeError(`request body is larger than ${MAX_BODY_BYTES} bytes`, { field: 'body' });
  }
  try {
    return { raw, parsed: JSON.parse(raw) as unknown };
  } catch {
    throw new InputError('body: not valid JSON', { field: 'body' });
  }
}

export function createApiHandler(options: ApiHandlerOptions) {
  const router = new Router(routes);
  const version = options.version ?? '0.1.0';
  let openApi: unknown;
  const log = (fields: Record<string, unknown>) =>
    options.logger.error(String(fields.message ?? 'error'), fields);

  const base = async (
    event: APIGatewayProxyEvent,
    context?: { getRemainingTimeInMillis?: () => number },
  ): Promise<APIGatewayProxyResult> => {
    const method = event.httpMethod.toUpperCase();
    let matched: ReturnType<typeof router.match>;
    try {
      matched = router.match(method, event.path);
    } catch (e) {
      if (e instanceof MethodNotAllowedError) {
        return json(
          405,
          { error: { code: 'MethodNotAllowed', message: e.message } },
          { allow: e.allow.join(', ') },
        );
      }
      throw e;
    }
    const { raw, parsed } = readBody(event);
    const strata = await options.getStrata();
    // A null-prototype map, so a parameter named `__proto__` stays a parameter (and is refused).
    const query: Record<string, string> = Object.create(null);
    for (const [k, v] of Object.entries(event.queryStringParameters ?? {})) if (v !== undefined) query[k] = v;
    const ctx: ApiContext = {
      strata,
      body: parsed,
      query,
      version,
      openApi: () => {
        openApi ??= buildOpenApi(routes, routeDocs, version);
        return openApi;
      },
    };
    const run = async (): Promise<StoredResponse> => {
      try {
        const r = await matched.route.handle(ctx, matched.params);
        return {
          statusCode: r.status,
          body: r.body === undefined ? '' : JSON.stringify(r.body),
          headers: { 'content-type': 'application/json', ...(r.headers ?? {}) },
        };
      } catch (e) {
        const res = errorResponse(e, log);
        return {
          statusCode: res.statusCode,
          body: res.body,
          headers: (res.headers ?? {}) as Record<string, string>,
        };
      }
    };

    const key = header(event, 'idempotency-key');
    if (method === 'GET' || key === undefined) {
      const res = await run();
      return res;
    }
    const checked = IdempotencyKeyHeader.safeParse(key);
    if (!checked.success) throw inputErrorFromZod(checked.error, 'Idempotency-Key');
    const caller =
      event.requestContext?.identity?.userArn ?? event.requestContext?.identity?.caller ?? 'anonymous';
    const res = await new IdempotencyStore(strata.ports.repo).run(
      caller,
      checked.data,
      `${method} ${event.path}?${new URLSearchParams(Object.entries(query).sort()).toString()}\n${raw}`,
      run,
      {
        ...(context?.getRemainingTimeInMillis ? { timeLimitMs: context.getRemainingTimeInMillis() } : {}),
        omitGrants: routeDocs.get(`${matched.route.method} ${matched.route.path}`)?.grants === true,
        reread: async (location) => {
          const found = router.match('GET', location);
          const r = await found.route.handle({ ...ctx, body: undefined, query: {} }, found.params);
          return { statusCode: r.status, body: JSON.stringify(r.body ?? null), headers: {} };
        },
      },
    );
    return {
      statusCode: res.statusCode,
      body: res.body,
      headers: { ...res.headers, ...(res.replayed ? { 'idempotent-replayed': 'true' } : {}) },
    };
  };

  return middy(base).use({
    onError: (request) => {
      request.response = errorResponse(request.error, log);
    },
  });
}
