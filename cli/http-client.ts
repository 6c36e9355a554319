/**
 * A small typed client for the Strata REST API, built on the runtime's fetch.
 */
import { randomUUID } from 'node:crypto';
import type {
  Accepted,
  CompletedPart,
  ErrorEnvelope,
  Health,
  Host,
  HostCreated,
  Job,
  JobAccepted,
  NewHost,
  NewStore,
  NewTemplate,
  NewTemplateUpload,
  NewVolume,
  Page,
  PlacementExplanation,
  Store,
  StorePatch,
  Template,
  TemplateAccepted,
  TemplateUploadStarted,
  UploadPartUrls,
  Volume,
  VolumeAccepted,
  VolumeResize,
} from './api-types.js';
import type { Env, RequestSigner } from './sigv4.js';

export const DEFAULT_PORT = 8787;

/** The API base URL: the flag, else STRATA_API_URL, else the embedded stack on this machine. */
export function resolveBaseUrl(flag: string | undefined, env: Env): string {
  const chosen = flag ?? env['STRATA_API_URL'];
  if (chosen) return chosen;
  return `http://127.0.0.1:${env['STRATA_PORT'] || DEFAULT_PORT}`;
}

/** The API answered with an error status; carries the error envelope's fields. */
export class CliApiError extends Error {
  override readonly name = 'CliApiError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string,
    readonly requestId?: string,
    /** Anything else the envelope carried, e.g. the current `state` or blocking `dependents`. */
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

/** The request never got an HTTP answer (refused, reset, timed out). */
export class CliConnectionError extends Error {
  override readonly name = 'CliConnectionError';
  constructor(
    readonly url: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export type Query = Record<string, string | number | undefined>;

export interface RequestOptions {
  query?: Query;
  body?: unknown;
  /** Overrides the fresh key a mutating request otherwise gets. */
  idempotencyKey?: string;
}

export interface ApiResponse<T> {
  status: number;
  body: T;
  headers: Headers;
}

export interface StrataClientOptions {
  baseUrl: string;
  signer?: RequestSigner;
  /** Sent as `Authorization: Bearer <token>` when there is no signer (the embedded stack's API). */
  bearerToken?: string;
  /** Used for every mutating request of this client instead of a fresh UUID each (for scripted retries). */
  idempotencyKey?: string;
  /** Per-attempt timeout. */
  timeoutMs?: number;
  /** Pause before the single retry after a connection error. */
  retryDelayMs?: number;
  userAgent?: string;
}

const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

// Codes for failures where the request most likely never reached the handler, or where the answer
// was lost: safe to send again when the request is idempotent by method or by key.
const TRANSIENT_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CLOSED',
  'UND_ERR_CONNECT_TIMEOUT',
]);

// Duck-typed rather than `instanceof Error`: fetch's errors can come from another realm (a VM
// context such as a test runner's), where they are not instances of this realm's Error.
function errorCode(error: unknown): string | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 4 && typeof current === 'object' && current !== null; depth++) {
    const { code, cause } = current as { code?: unknown; cause?: unknown };
    if (typeof code === 'string') return code;
    current = cause;
  }
  return undefined;
}

function errorName(error: unknown): string | undefined {
  const name = typeof error === 'object' && error !== null ? (error as { name?: unknown }).name : undefined;
  return typeof name === 'string' ? name : undefined;
}

function errorMessage(error: unknown): string {
  const message =
    typeof error === 'object' && error !== null ? (error as { message?: unknown }).message : undefined;
  return typeof message === 'string' ? message : String(error);
}

function isTransient(error: unknown): boolean {
  const code = errorCode(error);
  return code !== undefined && TRANSIENT_CODES.has(code);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class StrataClient {
  readonly baseUrl: string;
  private readonly signer: RequestSigner | undefined;
  private readonly bearerToken: string | undefined;
  private readonly fixedKey: string | undefined;
  private readonly timeoutMs: number;
  private readonly retryDelayMs: number;
  private readonly userAgent: string;

  constructor(options: StrataClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.signer = options.signer;
    this.bearerToken = options.bearerToken;
    this.fixedKey = options.idempotencyKey;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.retryDelayMs = options.retryDelayMs ?? 250;
    this.userAgent = options.userAgent ?? 'strata-cli';
  }

  health(): Promise<Health> {
    return this.get('/health');
  }

  listHosts(query: Query = {}): Promise<Page<Host>> {
    return this.get('/hosts', query);
  }
  getHost(id: string): Promise<Host> {
    return this.get(`/hosts/${seg(id)}`);
  }
  async createHost(host: NewHost): Promise<HostCreated> {
    return (await this.request<HostCreated>('POST', '/hosts', { body: host })).body;
  }
  /** Asks the host's runtime for its build and prerequisites; the job's result is a HostProbeResult. */
  probeHost(id: string): Promise<JobAccepted> {
    return this.requestJob('POST', `/hosts/${seg(id)}/probe`);
  }
  async setHostStatus(id: string, status: 'Up' | 'Disabled'): Promise<Host> {
    return (await this.request<Host>('PATCH', `/hosts/${seg(id)}`, { body: { status } })).body;
  }
  async deleteHost(id: string): Promise<void> {
    await this.request('DELETE', `/hosts/${seg(id)}`);
  }

  listStores(query: Query = {}): Promise<Page<Store>> {
    return this.get('/stores', query);
  }
  getStore(id: string): Promise<Store> {
    return this.get(`/stores/${seg(id)}`);
  }
  async createStore(store: NewStore): Promise<Accepted<Store>> {
    return (await this.request<Accepted<Store>>('POST', '/stores', { body: store })).body;
  }
  async updateStore(id: string, patch: StorePatch): Promise<Store> {
    return (await this.request<Store>('PATCH', `/stores/${seg(id)}`, { body: patch })).body;
  }
  async deleteStore(id: string): Promise<void> {
    await this.request('DELETE', `/stores/${seg(id)}`);
  }
  async startMaintenance(id: string): Promise<Accepted<Store>> {
    return (await this.request<Accepted<Store>>('POST', `/stores/${seg(id)}/maintenance`)).body;
  }
  async cancelMaintenance(id: string): Promise<Accepted<Store>> {
    return (await this.request<Accepted<Store>>('DELETE', `/stores/${seg(id)}/maintenance`)).body;
  }
  /** Lists what the storage holds, on a host; the job's result is a StoreInventory. */
  sweep(options: { dryRun: boolean; storeIds?: string[] }): Promise<JobAccepted> {
    return this.requestJob('POST', '/sweeps', { body: options });
  }
  inventoryStore(id: string): Promise<JobAccepted> {
    return this.requestJob('POST', `/stores/${seg(id)}/inventory`);
  }

  listTemplates(query: Query = {}): Promise<Page<Template>> {
    return this.get('/templates', query);
  }
  getTemplate(id: string): Promise<Template> {
    return this.get(`/templates/${seg(id)}`);
  }
  async registerTemplate(template: NewTemplate): Promise<TemplateAccepted> {
    return (await this.request<TemplateAccepted>('POST', '/templates', { body: template })).body;
  }
  async startTemplateUpload(
    upload: NewTemplateUpload,
    options: { idempotencyKey?: string } = {},
  ): Promise<TemplateUploadStarted> {
    return (
      await this.request<TemplateUploadStarted>('POST', '/templates/uploads', { body: upload, ...options })
    ).body;
  }
  async completeTemplateUpload(
    id: string,
    uploadId: string,
    parts: CompletedPart[],
    options: { idempotencyKey?: string } = {},
  ): Promise<TemplateAccepted> {
    const path = `/templates/${seg(id)}/uploads/${seg(uploadId)}/complete`;
    return (await this.request<TemplateAccepted>('POST', path, { body: { parts }, ...options })).body;
  }
  /**
   * Fresh part URLs for an open upload (at most 1000 parts a call). Each call has its own key: a
   * renewal changes nothing, and a replayed answer would carry no URLs (idempotency records never
   * keep grants), so an answer that says `grantsOmitted` is asked for again under a new key.
   */
  async renewTemplateUploadParts(
    id: string,
    uploadId: string,
    partNumbers: number[],
  ): Promise<UploadPartUrls> {
    const path = `/templates/${seg(id)}/uploads/${seg(uploadId)}/parts`;
    const ask = async () =>
      (
        await this.request<UploadPartUrls>('POST', path, {
          body: { partNumbers },
          idempotencyKey: randomUUID(),
        })
      ).body;
    const answer = await ask();
    return answer.grantsOmitted ? ask() : answer;
  }
  async abortTemplateUpload(
    id: string,
    uploadId: string,
    options: { idempotencyKey?: string } = {},
  ): Promise<void> {
    await this.request('DELETE', `/templates/${seg(id)}/uploads/${seg(uploadId)}`, options);
  }
  async copyTemplate(id: string, storeId: string): Promise<TemplateAccepted> {
    return (
      await this.request<TemplateAccepted>('POST', `/templates/${seg(id)}/copies`, { body: { storeId } })
    ).body;
  }
  async deleteTemplate(id: string): Promise<void> {
    await this.request('DELETE', `/templates/${seg(id)}`);
  }

  listVolumes(query: Query = {}): Promise<Page<Volume>> {
    return this.get('/volumes', query);
  }
  getVolume(id: string): Promise<Volume> {
    return this.get(`/volumes/${seg(id)}`);
  }
  async createVolume(volume: NewVolume): Promise<VolumeAccepted> {
    return (await this.request<VolumeAccepted>('POST', '/volumes', { body: volume })).body;
  }
  /** The same request as {@link createVolume} with ?dryRun=true: the API explains where it would go. */
  async explainVolumePlacement(
    volume: NewVolume,
    options: { idempotencyKey?: string } = {},
  ): Promise<PlacementExplanation> {
    return (
      await this.request<PlacementExplanation>('POST', '/volumes', {
        body: volume,
        query: { dryRun: 'true' },
        ...options,
      })
    ).body;
  }
  async resizeVolume(id: string, resize: VolumeResize): Promise<VolumeAccepted> {
    return (await this.request<VolumeAccepted>('POST', `/volumes/${seg(id)}/resize`, { body: resize })).body;
  }
  async migrateVolume(id: string, storeId: string): Promise<VolumeAccepted> {
    return (await this.request<VolumeAccepted>('POST', `/volumes/${seg(id)}/migrate`, { body: { storeId } }))
      .body;
  }
  deleteVolume(id: string): Promise<JobAccepted> {
    return this.requestJob('DELETE', `/volumes/${seg(id)}`);
  }
  /** The job's result is a VolumeAccessGranted: the URI the host reaches the volume at. */
  grantVolumeAccess(id: string, hostId: string): Promise<JobAccepted> {
    return this.requestJob('POST', `/volumes/${seg(id)}/access`, { body: { hostId } });
  }
  revokeVolumeAccess(id: string, hostId: string): Promise<JobAccepted> {
    return this.requestJob('DELETE', `/volumes/${seg(id)}/access/${seg(hostId)}`);
  }

  listJobs(query: Query = {}): Promise<Page<Job>> {
    return this.get('/jobs', query);
  }
  getJob(id: string): Promise<Job> {
    return this.get(`/jobs/${seg(id)}`);
  }

  /**
   * Sends a request the API answers with 202 and `{ job }`. An answer without a job is an error here,
   * not a crash later: it is what an API older than this contract answers (200 or 204).
   */
  async requestJob(method: string, path: string, options: RequestOptions = {}): Promise<JobAccepted> {
    const { status, body } = await this.request<Partial<JobAccepted> | undefined>(method, path, options);
    const job = body?.job;
    if (typeof job !== 'object' || job === null || typeof job.id !== 'string') {
      throw new CliApiError(
        status,
        'BAD_RESPONSE',
        `the API answered ${method} ${path} with ${status} but no job to follow; is it older than this CLI?`,
      );
    }
    return { job };
  }

  private async get<T>(path: string, query?: Query): Promise<T> {
    return (await this.request<T>('GET', path, query ? { query } : {})).body;
  }

  /** Sends one request, retrying once on a connection error when that cannot apply it twice. */
  async request<T = unknown>(
    method: string,
    path: string,
    options: RequestOptions = {},
  ): Promise<ApiResponse<T>> {
    const url = new URL(this.baseUrl + path);
    for (const [key, value] of Object.entries(options.query ?? {})) {
      if (value !== undefined && value !== '') url.searchParams.set(key, String(value));
    }
    const headers: Record<string, string> = { accept: 'application/json', 'user-agent': this.userAgent };
    const body = options.body === undefined ? undefined : JSON.stringify(options.body);
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (this.bearerToken !== undefined && !this.signer) headers.authorization = `Bearer ${this.bearerToken}`;
    if (MUTATING.has(method)) {
      // One key per logical request, reused by the retry below: the server then answers the retry
      // from its idempotency record instead of applying the change a second time.
      headers['idempotency-key'] = options.idempotencyKey ?? this.fixedKey ?? randomUUID();
    }
    const signedHeaders = this.signer
      ? await this.signer({ method, url, headers, ...(body === undefined ? {} : { body }) })
      : headers;
    // Every request is safe to repeat: reads by method, mutations by their idempotency key.
    let response: Response;
    try {
      response = await this.send(url, method, signedHeaders, body);
    } catch (error) {
      if (!isTransient(error)) throw this.connectionError(url, error);
      await sleep(this.retryDelayMs);
      try {
        response = await this.send(url, method, signedHeaders, body);
      } catch (retryError) {
        throw this.connectionError(url, retryError);
      }
    }
    return this.read<T>(response);
  }

  private send(url: URL, method: string, headers: Record<string, string>, body: string | undefined) {
    return fetch(url, {
      method,
      headers,
      ...(body === undefined ? {} : { body }),
      signal: AbortSignal.timeout(this.timeoutMs),
    });
  }

  private async read<T>(response: Response): Promise<ApiResponse<T>> {
    const text = await response.text();
    let parsed: unknown;
    if (text.length > 0) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
    }
    if (!response.ok) throw toApiError(response, parsed, text);
    if (text.length > 0 && parsed === undefined) {
      throw new CliApiError(
        response.status,
        'BAD_RESPONSE',
        `the API answered ${response.status} with a body that is not JSON: ${truncate(text)}`,
      );
    }
    return { status: response.status, body: parsed as T, headers: response.headers };
  }

  private connectionError(url: URL, error: unknown): CliConnectionError {
    const where = `${url.protocol}//${url.host}`;
    if (errorName(error) === 'TimeoutError') {
      return new CliConnectionError(where, `no answer from ${where} within ${this.timeoutMs / 1000}s`, {
        cause: error,
      });
    }
    const code = errorCode(error);
    // fetch's own message is a bare "fetch failed"; the cause says what actually went wrong.
    const cause =
      typeof error === 'object' && error !== null ? (error as { cause?: unknown }).cause : undefined;
    const reason = code ?? errorMessage(cause ?? error);
    const hint =
      code === 'ECONNREFUSED' && /^(127\.|localhost|\[::1\])/.test(url.host)
        ? ' (is the embedded stack running? start it with `npm start`, or point --api-url / STRATA_API_URL elsewhere)'
        : '';
    return new CliConnectionError(where, `cannot reach the Strata API at ${where}: ${reason}${hint}`, {
      cause: error,
    });
  }
}

function seg(id: string): string {
  return encodeURIComponent(id);
}

function truncate(text: string, max = 200): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
}

function isEnvelope(value: unknown): value is ErrorEnvelope {
  if (typeof value !== 'object' || value === null) return false;
  const error = (value as { error?: unknown }).error;
  return (
    typeof error === 'object' &&
    error !== null &&
    typeof (error as { code?: unknown }).code === 'string' &&
    typeof (error as { message?: unknown }).message === 'string'
  );
}

function toApiError(response: Response, parsed: unknown, text: string): CliApiError {
  const requestId =
    response.headers.get('x-request-id') ?? response.headers.get('x-amzn-requestid') ?? undefined;
  if (isEnvelope(parsed)) {
    const { code, message, field, ...extra } = parsed.error as ErrorEnvelope['error'] &
      Record<string, unknown>;
    return new CliApiError(
      response.status,
      code,
      message,
      typeof field === 'string' ? field : undefined,
      requestId,
      extra,
    );
  }
  // API Gateway answers its own failures (auth, throttling, missing route) with `{ message }`.
  const gatewayMessage =
    typeof parsed === 'object' && parsed !== null
      ? ((parsed as { message?: unknown; Message?: unknown }).message ??
        (parsed as { Message?: unknown }).Message)
      : undefined;
  const message =
    typeof gatewayMessage === 'string'
      ? gatewayMessage
      : text
        ? truncate(text)
        : response.statusText || 'no details';
  return new CliApiError(response.status, `HTTP_${response.status}`, message, undefined, requestId);
}
