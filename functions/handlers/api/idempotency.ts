/**
 * `Idempotency-Key` for mutating requests: the first request with a key runs and its answer is
 * stored; a repeat with the same key and the same request gets the stored answer again (marked
 * `idempotent-replayed: true`); the same key with a different request is refused with 422; a repeat
 * while the first is still running gets 409. Keys are scoped by caller, and records expire after 24 h.
 */
import { createHash } from 'node:crypto';
import { ConflictError, UnprocessableError } from '../../core/errors.js';
import type { Repository } from '../../core/ports.js';

const TTL_SECONDS = 24 * 60 * 60;
const IN_PROGRESS = 0;

export interface StoredResponse {
  statusCode: number;
  body: string;
  headers: Record<string, string>;
}

export class IdempotencyStore {
  constructor(private readonly repo: Repository) {}

  /**
   * Runs `work` once per (caller, key). `requestFingerprint` identifies the request (method, path, body).
   * Answers of 5xx are not stored, so the client may retry them.
   */
  async run(
    caller: string,
    key: string,
    requestFingerprint: string,
    work: () => Promise<StoredResponse>,
  ): Promise<StoredResponse & { replayed: boolean }> {
    const id = createHash('sha256').update(`${caller}\n${key}`).digest('hex');
    const requestHash = createHash('sha256').update(requestFingerprint).digest('hex');
    const existing = await this.repo.get({ type: 'Idempotency', id });
    if (existing) return { ...this.replay(existing, requestHash), replayed: true };
    try {
      await this.repo.create('Idempotency', {
        key: id,
        requestHash,
        statusCode: IN_PROGRESS,
        body: '',
        headers: {},
        expiresAtEpoch: Math.floor(Date.now() / 1000) + TTL_SECONDS,
      });
    } catch (e) {
      if (!(e instanceof ConflictError)) throw e;
      const winner = await this.repo.require({ type: 'Idempotency', id });
      return { ...this.replay(winner, requestHash), replayed: true };
    }
    let response: StoredResponse;
    try {
      response = await work();
    } catch (e) {
      await this.repo.delete({ type: 'Idempotency', id });
      throw e;
    }
    if (response.statusCode >= 500) {
      await this.repo.delete({ type: 'Idempotency', id });
    } else {
      await this.repo.update({ type: 'Idempotency', id }, 1, {
        statusCode: response.statusCode,
        body: response.body,
        headers: response.headers,
      });
    }
    return { ...response, replayed: false };
  }

  private replay(
    record: { requestHash: string; statusCode: number; body: string; headers: Record<string, string> },
    requestHash: string,
  ): StoredResponse {
    if (record.requestHash !== requestHash) {
      throw new UnprocessableError('this Idempotency-Key was already used for a different request', {
        field: 'Idempotency-Key',
      });
    }
    if (record.statusCode === IN_PROGRESS) {
      throw new ConflictError('a request with this Idempotency-Key is still being processed', {
        field: 'Idempotency-Key',
      });
    }
    return { statusCode: record.statusCode, body: record.body, headers: record.headers };
  }
}
