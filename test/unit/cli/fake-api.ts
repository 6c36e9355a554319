/**
 * A stand-in for the Strata API on a real HTTP socket (127.0.0.1, port 0), recording every request,
 * plus a harness that runs the CLI in-process against it.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { run } from '../../../cli/main.js';

export interface RecordedRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  headers: IncomingHttpHeaders;
  rawBody: string;
  body: unknown;
}

export interface Reply {
  status: number;
  body?: unknown;
  /** Sent as-is instead of JSON. */
  raw?: string;
  headers?: Record<string, string>;
  /** Hold the answer back this long. */
  delayMs?: number;
}

/** A canned answer, a function of the request, or 'drop' to cut the connection without answering. */
export type Answer = Reply | 'drop' | ((request: RecordedRequest) => Reply | 'drop');

export class FakeApi {
  readonly requests: RecordedRequest[] = [];
  private readonly routes = new Map<string, Answer[]>();
  private server: Server | undefined;
  url = '';

  /**
   * Queues answers for `METHOD /path`: each request takes the next one, and the last one repeats.
   */
  on(method: string, path: string, ...answers: Answer[]): this {
    this.routes.set(`${method} ${path}`, answers);
    return this;
  }

  /**
   * Answers `METHOD path` as the API answers a request that does host work: 202 with the job as
   * started (`pending`, no result or error) and its `location`; GET /jobs/<id> then answers `finished`.
   * `started` overrides fields of the 202's job, e.g. to have it already running.
   */
  acceptJob(
    method: string,
    path: string,
    finished: Record<string, unknown>,
    started: Record<string, unknown> = {},
  ): this {
    const { result: _result, error: _error, ...rest } = finished;
    const id = String(finished['id']);
    const job = { ...rest, state: 'pending', progress: 0, ...started };
    return this.on(method, path, { status: 202, body: { job }, headers: { location: `/jobs/${id}` } }).on(
      'GET',
      `/jobs/${id}`,
      { status: 200, body: finished },
    );
  }

  /** `METHOD path` of each request, in order. */
  calls(): string[] {
    return this.requests.map((request) => `${request.method} ${request.path}`);
  }

  /** Requests other than GET, in order. */
  mutations(): RecordedRequest[] {
    return this.requests.filter((request) => request.method !== 'GET');
  }

  last(): RecordedRequest {
    const request = this.requests.at(-1);
    if (!request) throw new Error('the fake API received no request');
    return request;
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        const url = new URL(req.url ?? '/', 'http://fake');
        const rawBody = Buffer.concat(chunks).toString('utf8');
        let body: unknown;
        try {
          body = rawBody ? JSON.parse(rawBody) : undefined;
        } catch {
          body = rawBody;
        }
        const recorded: RecordedRequest = {
          method: req.method ?? 'GET',
          path: url.pathname,
          query: Object.fromEntries(url.searchParams),
          headers: req.headers,
          rawBody,
          body,
        };
        this.requests.push(recorded);
        const queue = this.routes.get(`${recorded.method} ${recorded.path}`);
        const next = queue && (queue.length > 1 ? queue.shift()! : queue[0]!);
        const answer =
          next === undefined
            ? {
                status: 404,
                body: {
                  error: { code: 'NOT_FOUND', message: `no route ${recorded.method} ${recorded.path}` },
                },
              }
            : typeof next === 'function'
              ? next(recorded)
              : next;
        if (answer === 'drop') {
          req.socket.destroy();
          return;
        }
        const text = answer.raw ?? (answer.body === undefined ? '' : JSON.stringify(answer.body));
        const reply = () => {
          if (res.destroyed) return;
          res.writeHead(answer.status, {
            ...(text && answer.raw === undefined ? { 'content-type': 'application/json' } : {}),
            ...answer.headers,
          });
          res.end(text);
        };
        if (answer.delayMs) setTimeout(reply, answer.delayMs).unref();
        else reply();
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    const { port } = this.server.address() as AddressInfo;
    this.url = `http://127.0.0.1:${port}`;
    return this;
  }

  async stop(): Promise<void> {
    const server = this.server;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

export class Capture {
  text = '';
  constructor(readonly isTTY = false) {}
  write(chunk: string): boolean {
    this.text += chunk;
    return true;
  }
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export const FIXED_NOW = new Date('2025-06-01T12:00:00.000Z');

export async function runCli(
  argv: string[],
  options: { api?: FakeApi; env?: Record<string, string | undefined>; tty?: boolean } = {},
): Promise<CliResult> {
  const stdout = new Capture();
  const stderr = new Capture(options.tty ?? false);
  const env = { ...(options.api ? { STRATA_API_URL: options.api.url } : {}), ...options.env };
  const code = await run(argv, {
    stdout,
    stderr,
    env,
    now: () => FIXED_NOW,
    poll: { initialMs: 1, maxMs: 5, factor: 2 },
  });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

/**
 * Asserts that a command line was refused before any request: exit 2, the message, and the pointer
 * to the help of `command` (e.g. `volumes create`).
 */
export function expectUsageError(result: CliResult, api: FakeApi, command: string, message: string): void {
  expect(result.code).toBe(2);
  expect(result.stderr).toContain(message);
  expect(result.stderr).toContain(`Run 'strata ${command} --help' for usage.`);
  expect(api.requests).toHaveLength(0);
}

export function host(overrides: Record<string, unknown> = {}) {
  return {
    id: 'h-1',
    name: 'kvm-01',
    zoneId: 'zone-1',
    clusterId: 'cl-1',
    instanceId: 'mi-0123456789abcdef0',
    hypervisor: 'kvm',
    status: 'Up',
    attachedStoreIds: ['st-1', 'st-2'],
    version: 1,
    createdAt: '2025-06-01T11:55:00.000Z',
    updatedAt: '2025-06-01T11:59:00.000Z',
    ...overrides,
  };
}

export function store(overrides: Record<string, unknown> = {}) {
  return {
    id: 'st-1',
    name: 'nfs-1',
    provider: 'nfs',
    role: 'primary',
    scope: { type: 'cluster', zoneId: 'zone-1', clusterId: 'cl-1' },
    details: { server: '10.0.0.5', path: '/export/primary' },
    capacityBytes: 100 * 2 ** 30,
    overprovisioning: 2,
    disableThreshold: 0.9,
    tags: ['ssd'],
    status: 'Up',
    allocatedBytes: 20 * 2 ** 30,
    usedBytes: 5 * 2 ** 30,
    version: 3,
    createdAt: '2025-06-01T10:00:00.000Z',
    updatedAt: '2025-06-01T11:00:00.000Z',
    ...overrides,
  };
}

export function job(overrides: Record<string, unknown> = {}) {
  return {
    id: 'job-1',
    kind: 'store.add',
    target: { type: 'DataStore', id: 'st-1' },
    state: 'pending',
    progress: 0,
    createdAt: '2025-06-01T11:59:30.000Z',
    updatedAt: '2025-06-01T11:59:50.000Z',
    ...overrides,
  };
}

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
