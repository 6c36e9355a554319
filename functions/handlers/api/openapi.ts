/** Builds the OpenAPI 3.1 document from the routes and their zod schemas (one source of truth). */
import { z } from 'zod';
import type { Route } from './router.js';
import type { ApiContext, RouteDoc } from './routes.js';

const errorSchema = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message'],
      properties: { code: { type: 'string' }, message: { type: 'string' }, field: { type: 'string' } },
    },
  },
};

function jsonSchema(schema: z.ZodType, io: 'input' | 'output' = 'input'): Record<string, unknown> {
  const { $schema: _ignored, ...rest } = z.toJSONSchema(schema, { io, unrepresentable: 'any' }) as Record<
    string,
    unknown
  >;
  return rest;
}

export function buildOpenApi(
  routes: Route<ApiContext>[],
  docs: Map<string, RouteDoc>,
  version: string,
): unknown {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const doc = docs.get(`${r.method} ${r.path}`) ?? {};
    const parameters: unknown[] = [...r.path.matchAll(/\{([a-zA-Z]+)\}/g)].map((m) => ({
      name: m[1],
      in: 'path',
      required: true,
      schema: { type: 'string' },
    }));
    if (doc.query) {
      const q = jsonSchema(doc.query) as { properties?: Record<string, unknown> };
      for (const [name, schema] of Object.entries(q.properties ?? {}))
        parameters.push({ name, in: 'query', schema });
    }
    if (r.method !== 'GET') {
      parameters.push({
        name: 'Idempotency-Key',
        in: 'header',
        schema: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,128}$' },
      });
    }
    const responses: Record<string, unknown> = {
      [doc.async ? '202' : r.method === 'POST' ? '201' : r.method === 'DELETE' ? '204' : '200']: {
        description: doc.async ? 'Accepted; follow the job at the Location header' : 'Success',
      },
      '400': { description: 'Invalid input', content: { 'application/json': { schema: errorSchema } } },
      '404': { description: 'Not found', content: { 'application/json': { schema: errorSchema } } },
      '409': {
        description: 'Conflict with the current state',
        content: { 'application/json': { schema: errorSchema } },
      },
      '422': { description: 'Unprocessable', content: { 'application/json': { schema: errorSchema } } },
      ...(doc.body
        ? {
            '415': {
              description: 'The body is not application/json',
              content: { 'application/json': { schema: errorSchema } },
            },
          }
        : {}),
    };
    paths[r.path] ??= {};
    paths[r.path]![r.method.toLowerCase()] = {
      summary: r.summary,
      parameters,
      ...(doc.body
        ? {
            requestBody: {
              required: true,
              content: { 'application/json': { schema: jsonSchema(doc.body) } },
            },
          }
        : {}),
      responses,
      security: [{ sigv4: [] }],
    };
  }
  return {
    openapi: '3.1.0',
    info: { title: 'Strata storage orchestration API', version },
    components: {
      securitySchemes: {
        sigv4: {
          type: 'apiKey',
          name: 'Authorization',
          in: 'header',
          'x-amazon-apigateway-authtype': 'awsSigv4',
        },
      },
    },
    paths,
  };
}
