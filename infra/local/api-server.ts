/**
 * The embedded stack's API: a plain node:http server that turns each request into the API Gateway
 * proxy event the Lambda receives on AWS and calls the very same handler.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { APIGatewayProxyEvent, APIGatewayProxyResult, Context } from 'aws-lambda';
import { MAX_BODY_BYTES } from '../../functions/handlers/api/handler.js';
import { lambdaContext } from './lambda-context.js';

export type ProxyHandler = (event: APIGatewayProxyEvent, context: Context) => Promise<APIGatewayProxyResult>;

export interface LocalApiServer {
  url: string;
  close(): Promise<void>;
}

function toEvent(req: http.IncomingMessage, body: string): APIGatewayProxyEvent {
  const url = new URL(req.url ?? '/', 'http://local');
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers[k] = v;
  const query: Record<string, string> = {};
  for (const [k, v] of url.searchParams) query[k] = v;
  return {
    httpMethod: req.method ?? 'GET',
    path: url.pathname,
    resource: '/{proxy+}',
    headers,
    multiValueHeaders: {},
    queryStringParameters: Object.keys(query).length ? query : null,
    multiValueQueryStringParameters: null,
    pathParameters: { proxy: url.pathname.slice(1) },
    stageVariables: null,
    body: body.length ? body : null,
    isBase64Encoded: false,
    requestContext: {
      identity: { caller: 'local', userArn: 'arn:aws:iam::000000000000:user/local' },
      requestId: randomUUID(),
    } as APIGatewayProxyEvent['requestContext'],
  };
}

/** Serves `handler` on 127.0.0.1:`port` (0 picks a free port). */
export async function startLocalApiServer(options: {
  handler: ProxyHandler;
  port: number;
}): Promise<LocalApiServer> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        if (!refused) {
          refused = true;
          res.writeHead(413, { 'content-type': 'application/json', connection: 'close' });
          res.end(
            JSON.stringify({
              error: {
                code: 'PayloadTooLarge',
                message: `request body is larger than ${MAX_BODY_BYTES} bytes`,
                field: 'body',
              },
            }),
          );
          req.destroy();
        }
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (refused) return;
      const event = toEvent(req, Buffer.concat(chunks).toString('utf8'));
      options
        .handler(event, lambdaContext('strata-api', 30_000))
        .then((result) => {
          res.writeHead(result.statusCode, result.headers as http.OutgoingHttpHeaders);
          res.end(result.body);
        })
        .catch((e: unknown) => {
          res.writeHead(500, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: { code: 'Internal', message: (e as Error).message } }));
        });
    });
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
