/**
 * `Idempotency-Key` for mutating requests: the first request with a key runs and its answer is
 * kept; a repeat with the same key and the same request gets that answer again (marked
 * `idempotent-replayed: true`); the same key with a different request is refused with 422; a repeat
 * while the first is still running gets 409. Keys are scoped by caller, and records expire after 24 h.
 *
 * A key never locks: the in-progress record holds only until the first request's time limit (the
 * Lambda's remaining time when it started). A function that died meanwhile leaves a record that the
 * next repeat takes over (a conditional write on the record's version) and runs the request again.
 *
 * Answers stay small in the item: a body up to {@link INLINE_BODY_BYTES} is kept as it is. A larger
 * answer that names its resource (a `location` header) keeps only that pointer, and its replay
 * re-reads the resource (so it shows the resource as it is now, with the original status code). A
 * larger answer without one is not kept: only errors are like that, and an error changed nothing
 * (the API's rule), so running the request again is its replay.
 *
 * A record never keeps a grant. For a route whose answer holds presigned URLs (`grants: true` in its
 * RouteDoc: `POST /templates/uploads` and `POST /templates/{id}/uploads/{uploadId}/parts`), the kept
 * body has every `url` field set to null and `grantsOmitted: true` at its top. A replay answers the
 * same template, upload id and part numbers without URLs; the client asks the parts route for fresh
 * ones. (A record lives 24 h, a URL would have been a bearer credential for all of that; and the
 * first answer's URLs are still valid for the caller who got them.)
 *
 * Why not `@aws-lambda-powertools/idempotency`: its DynamoDB layer writes its own item shape and
 * keeps the whole result in the item, where Strata's table holds only versioned entities written
 * through the Repository port; the pointer for large answers and the 422 on a reused key would
 * still be ours to write.
 */
import { createHash } from 'node:crypto';
import { ConflictError, UnprocessableError } from '../../core/errors.js';
import type { IdempotencyRecord } from '../../core/model.js';
import type { Repository } from '../../core/ports.js';

const TTL_SECONDS = 24 * 60 * 60;
const IN_PROGRESS = 0;
/** Bodies up to this size are kept in the record; larger ones by pointer (see above). */
export const INLINE_BODY_BYTES = 16 * 1024;
/** The time limit assumed when the caller gives none (API Gateway's own is 29 s). */
const DEFAULT_TIME_LIMIT_MS = 30_000;

export interface StoredResponse {
  statusCode: number;
  body: string;
  headers: Record<string, string>;
}

export interface IdempotentRun {
  /** How long the request may run (the Lambda's remaining time): the in-progress record's life. */
  timeLimitMs?: number;
  /** Re-reads the resource at a kept `location`, for the replay of a large answer. */
  reread: (location: string) => Promise<StoredResponse>;
  now?: () => number;
  /** The answer holds grants: keep it without them (see the module comment). */
  omitGrants?: boolean;
}

export class IdempotencyStore {
  constructor(private readonly repo: Repository) {}

  /**
   * Runs `work` once per (caller, key). `requestFingerprint` identifies the request (method, path, body).
   * Answers of 5xx are not kept, so the client may retry them.
   */
  async run(
    caller: string,
    key: string,
    requestFingerprint: string,
    work: () => Promise<StoredResponse>,
    options: IdempotentRun,
  ): Promise<StoredResponse & { replayed: boolean }> {
    const now = options.now ?? Date.now;
    const id = createHash('sha256').update(`${caller}\n${key}`).digest('hex');
    const requestHash = createHash('sha256').update(requestFingerprint).digest('hex');
    const lockedUntilMs = now() + (options.timeLimitMs ?? DEFAULT_TIME_LIMIT_MS);
    const ref = { type: 'Idempotency' as const, id };

    let version: number;
    const existing = await this.repo.get(ref);
    if (existing) {
      version = await this.takeOverOrReplay(existing, requestHash, lockedUntilMs, now());
      if (version < 0) return { ...(await this.replay(existing, options)), replayed: true };
    } else {
      try {
        version = (
          await this.repo.create('Idempotency', {
            key: id,
            requestHash,
            statusCode: IN_PROGRESS,
            body: '',
            headers: {},
            lockedUntilMs,
            expiresAtEpoch: Math.floor(now() / 1000) + TTL_SECONDS,
          })
        ).version;
      } catch (e) {
        if (!(e instanceof ConflictError)) throw e;
        const winner = await this.repo.require(ref);
        this.check(winner, requestHash, now());
        return { ...(await this.replay(winner, options)), replayed: true };
      }
    }

    let response: StoredResponse;
    try {
      response = await work();
    } catch (e) {
      await this.repo.delete(ref, version).catch(() => undefined);
      throw e;
    }
    const kept = keepable(options.omitGrants ? withoutGrants(response) : response);
    if (!kept) {
      await this.repo.delete(ref, version).catch(() => undefined);
    } else {
      // Conditional on the version this run wrote: a run that outlived its lock and was taken over
      // does not overwrite the answer of the run that took over.
      await this.repo.update(ref, version, { ...kept, lockedUntilMs: undefined }).catch((e: unknown) => {
        if (!(e instanceof ConflictError)) throw e;
      });
    }
    return { ...response, replayed: false };
  }

  /**
   * For a record that exists: -1 when it holds an answer to replay; otherwise (its run's lock has
   * run out) the version after taking it over for this run. Throws 422 / 409 as documented above.
   */
  private async takeOverOrReplay(
    record: IdempotencyRecord,
    requestHash: string,
    lockedUntilMs: number,
    nowMs: number,
  ): Promise<number> {
    if (this.check(record, requestHash, nowMs) === 'answered') return -1;
    try {
      const taken = await this.repo.update({ type: 'Idempotency', id: record.key }, record.version, {
        lockedUntilMs,
      });
      return taken.version;
    } catch (e) {
      if (e instanceof ConflictError) throw stillRunning();
      throw e;
    }
  }

  /** 'answered', or 'abandoned' (in progress past its lock); throws 422 or 409 otherwise. */
  private check(record: IdempotencyRecord, requestHash: string, nowMs: number): 'answered' | 'abandoned' {
    if (record.requestHash !== requestHash) {
      throw new UnprocessableError('this Idempotency-Key was already used for a different request', {
        field: 'Idempotency-Key',
      });
    }
    if (record.statusCode !== IN_PROGRESS) return 'answered';
    if ((record.lockedUntilMs ?? 0) > nowMs) throw stillRunning();
    return 'abandoned';
  }

  private async replay(record: IdempotencyRecord, options: IdempotentRun): Promise<StoredResponse> {
    if (record.bodyAt) {
      const current = await options.reread(record.bodyAt);
      return { statusCode: record.statusCode, body: current.body, headers: record.headers };
    }
    return { statusCode: record.statusCode, body: record.body, headers: record.headers };
  }
}

function stillRunning(): ConflictError {
  return new ConflictError('a request with this Idempotency-Key is still being processed', {
    field: 'Idempotency-Key',
  });
}

/**
 * The answer with every `url` field (at any depth) set to null and `grantsOmitted: true` added to
 * its top-level object. An answer that is not a JSON object (an error's, say) is kept unchanged
 * when it holds no URL, and not at all otherwise (statusCode 500 is never kept).
 */
export function withoutGrants(response: StoredResponse): StoredResponse {
  let parsed: unknown;
  try {
    parsed = response.body === '' ? undefined : JSON.parse(response.body);
  } catch {
    parsed = undefined;
  }
  let found = false;
  const strip = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(strip);
    if (value && typeof value === 'object') {
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value)) {
        if (k === 'url' && typeof v === 'string') {
          found = true;
          out[k] = null;
        } else out[k] = strip(v);
      }
      return out;
    }
    return value;
  };
  if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
    const stripped = strip(parsed) as Record<string, unknown>;
    if (!found) return response;
    return { ...response, body: JSON.stringify({ ...stripped, grantsOmitted: true }) };
  }
  // Not an object: nothing with a `url` field to strip; refuse to keep anything that looks signed.
  return /X-Amz-Signature/i.test(response.body) ? { ...response, statusCode: 500 } : response;
}

/** What of an answer the record keeps; undefined when it is not kept (see the module comment). */
function keepable(
  response: StoredResponse,
): Pick<IdempotencyRecord, 'statusCode' | 'body' | 'headers' | 'bodyAt'> | undefined {
  if (response.statusCode >= 500) return undefined;
  const { statusCode, headers } = response;
  if (Buffer.byteLength(response.body, 'utf8') <= INLINE_BODY_BYTES)
    return { statusCode, body: response.body, headers };
  const location = headers.location;
  if (location) return { statusCode, body: '', headers, bodyAt: location };
  return undefined;
}
