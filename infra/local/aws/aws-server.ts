/**
 * The plumbing every local AWS endpoint shares: an HTTP server on 127.0.0.1, SigV4 verification of
 * each request, and the AWS error shapes. JSON-protocol services (Step Functions, SSM) plug in a
 * table of operations; REST services (Scheduler) and proxies (DynamoDB, S3) use the pieces.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from '../../../drivers/sdk/types.js';
import { AccessDeniedError } from './iam-authorizer.js';
import type { LocalCredentialStore, Principal } from './principals.js';
import { SignatureError, type VerifiedCaller, verifySignature } from './sigv4-verify.js';

/** An error the service answers with its own code (`__type` in JSON protocols). */
export class AwsServiceError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status = 400,
  ) {
    super(message);
    this.name = code;
  }
}

export interface LocalEndpoint {
  url: string;
  close(): Promise<void>;
}

/** Reads a whole request body (JSON protocol bodies are small), refusing more than `limit` bytes. */
export function readBody(req: http.IncomingMessage, limit = 16 * 1024 * 1024): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new AwsServiceError('RequestEntityTooLarge', `request body over ${limit} bytes`, 413));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** Listens on 127.0.0.1 (port 0: a free one) and returns the URL. */
export async function listen(server: http.Server, port = 0): Promise<LocalEndpoint> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const { port: bound } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${bound}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Maps a failure to the JSON protocols' error (`{ __type, message }`). */
export function jsonError(error: unknown): { status: number; body: Record<string, string> } {
  if (error instanceof AwsServiceError) {
    return { status: error.status, body: { __type: error.code, message: error.message } };
  }
  if (error instanceof AccessDeniedError) {
    return { status: 400, body: { __type: 'AccessDeniedException', message: error.message } };
  }
  if (error instanceof SignatureError) {
    const status = error.code === 'MissingAuthenticationToken' ? 403 : 400;
    return { status, body: { __type: error.code, message: error.message } };
  }
  return {
    status: 500,
    body: { __type: 'InternalFailure', message: (error as Error)?.message ?? 'internal error' },
  };
}

/** What an operation sees of its caller. */
export interface CallContext {
  caller: VerifiedCaller;
}

export type JsonOperation = (input: Record<string, unknown>, context: CallContext) => Promise<unknown>;

/**
 * Where an endpoint reports each request it is about to serve (the crash matrix's fault controller,
 * infra/local/faults.ts). `true`: the caller was killed right here, so the request is not served and
 * its connection is dropped.
 */
export interface RequestTap {
  onRequest(principal: Principal, service: string, operation: string, presigned: boolean): Promise<boolean>;
}

export interface JsonServiceOptions {
  /** The signing name (`states`, `ssm`). */
  signingName: string;
  /** The X-Amz-Target prefix (`AWSStepFunctions`, `AmazonSSM`). */
  targetPrefix: string;
  /** `1.0` or `1.1`: the content type `application/x-amz-json-<version>`. */
  jsonVersion: '1.0' | '1.1';
  operations: Record<string, JsonOperation>;
  credentials: LocalCredentialStore;
  faults?: RequestTap;
  logger?: Logger;
  port?: number;
}

/**
 * Serves an AWS JSON-protocol API: `POST /` with `X-Amz-Target: <prefix>.<Operation>`, signed.
 *
 * @example
 * const sfn = await startJsonService({ signingName: 'states', targetPrefix: 'AWSStepFunctions',
 *   jsonVersion: '1.0', operations: { StartExecution: async (input, ctx) => ({ executionArn }) }, credentials });
 */
export async function startJsonService(options: JsonServiceOptions): Promise<LocalEndpoint> {
  const contentType = `application/x-amz-json-${options.jsonVersion}`;
  const server = http.createServer((req, res) => {
    const send = (status: number, body: unknown) => {
      const text = JSON.stringify(body ?? {});
      res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    void (async () => {
      try {
        const body = await readBody(req);
        const target = String(req.headers['x-amz-target'] ?? '');
        const [prefix, name] = target.split('.');
        if (req.method !== 'POST' || prefix !== options.targetPrefix || !name) {
          throw new AwsServiceError('UnknownOperationException', `unknown operation ${target || '(none)'}`);
        }
        const caller = verifySignature(
          { method: req.method, url: req.url ?? '/', headers: req.headers, body },
          options.credentials,
          { service: options.signingName },
        );
        const operation = Object.hasOwn(options.operations, name) ? options.operations[name] : undefined;
        if (!operation) {
          throw new AwsServiceError(
            'UnknownOperationException',
            `${options.targetPrefix}.${name} is not served locally`,
          );
        }
        if (await options.faults?.onRequest(caller.principal, options.signingName, name, caller.presigned)) {
          res.destroy();
          return;
        }
        let input: Record<string, unknown>;
        try {
          input = body.length ? (JSON.parse(body.toString('utf8')) as Record<string, unknown>) : {};
        } catch {
          throw new AwsServiceError('SerializationException', 'the request body is not JSON');
        }
        send(200, await operation(input, { caller }));
      } catch (error) {
        const { status, body } = jsonError(error);
        if (status >= 500)
          options.logger?.error('local AWS endpoint failed', {
            service: options.signingName,
            error: body.message,
          });
        send(status, body);
      }
    })();
  });
  return listen(server, options.port);
}
