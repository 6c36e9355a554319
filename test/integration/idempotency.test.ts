/**
 * Idempotency keys on DynamoDB Local: a key never locks past its request's time limit, a reused key
 * with another request is refused, and large answers are kept as a pointer, not in the item.
 */
import { createHash } from 'node:crypto';
import { DynamoRepository } from '../../functions/adapters/aws/dynamo-repository';
import { ConflictError, UnprocessableError } from '../../functions/core/errors';
import {
  IdempotencyStore,
  INLINE_BODY_BYTES,
  type StoredResponse,
} from '../../functions/handlers/api/idempotency';
import { freshTable } from '../support/integration';

let repo: DynamoRepository;
let clock = 1_000_000;
const now = () => clock;

beforeAll(async () => {
  const { doc, tableName } = await freshTable('idem');
  repo = new DynamoRepository({ tableName, client: doc });
});

const answer = (body: unknown, headers: Record<string, string> = {}): StoredResponse => ({
  statusCode: 202,
  body: JSON.stringify(body),
  headers: { 'content-type': 'application/json', ...headers },
});
const recordOf = (caller: string, key: string) =>
  repo.get({ type: 'Idempotency', id: createHash('sha256').update(`${caller}\n${key}`).digest('hex') });

describe('IdempotencyStore', () => {
  const store = () => new IdempotencyStore(repo);
  const noReread = async (): Promise<StoredResponse> => {
    throw new Error('not expected to re-read');
  };

  it('runs once and replays the kept answer; a different request with the key gets 422', async () => {
    let runs = 0;
    const work = async () => answer({ run: ++runs });
    const first = await store().run('alice', 'k1', 'POST /volumes\n{"a":1}', work, { reread: noReread, now });
    const again = await store().run('alice', 'k1', 'POST /volumes\n{"a":1}', work, { reread: noReread, now });
    expect(first).toMatchObject({ replayed: false, body: '{"run":1}' });
    expect(again).toMatchObject({ replayed: true, statusCode: 202, body: '{"run":1}' });
    await expect(
      store().run('alice', 'k1', 'POST /volumes\n{"a":2}', work, { reread: noReread, now }),
    ).rejects.toBeInstanceOf(UnprocessableError);
    // Keys are per caller.
    await expect(
      store().run('bob', 'k1', 'POST /volumes\n{"a":2}', work, { reread: noReread, now }),
    ).resolves.toMatchObject({ replayed: false, body: '{"run":2}' });
    expect(runs).toBe(2);
  });

  it('a repeat while the first runs gets 409; after the first run’s time limit it takes over', async () => {
    let release!: () => void;
    const blocked = new Promise<void>((resolve) => {
      release = resolve;
    });
    // The first request "dies": its work never returns within the test.
    const dying = store().run(
      'alice',
      'k2',
      'POST /x',
      async () => {
        await blocked;
        return answer({ by: 'first' });
      },
      { reread: noReread, now, timeLimitMs: 5_000 },
    );
    await new Promise((r) => setTimeout(r, 100));
    await expect(
      store().run('alice', 'k2', 'POST /x', async () => answer({ by: 'second' }), { reread: noReread, now }),
    ).rejects.toBeInstanceOf(ConflictError);
    clock += 6_000; // past the first request's time limit
    const taken = await store().run('alice', 'k2', 'POST /x', async () => answer({ by: 'second' }), {
      reread: noReread,
      now,
    });
    expect(taken).toMatchObject({ replayed: false, body: '{"by":"second"}' });
    // The first run finishing late does not overwrite the answer of the run that took over.
    release();
    await dying;
    const replay = await store().run('alice', 'k2', 'POST /x', async () => answer({ by: 'third' }), {
      reread: noReread,
      now,
    });
    expect(replay).toMatchObject({ replayed: true, body: '{"by":"second"}' });
  });

  it('keeps a large answer as a pointer and replays it by re-reading the resource', async () => {
    const big = { job: { id: 'job-1' }, padding: 'x'.repeat(INLINE_BODY_BYTES) };
    const work = async () => answer(big, { location: '/jobs/job-1' });
    await store().run('alice', 'k3', 'POST /big', work, { reread: noReread, now });
    const record = await recordOf('alice', 'k3');
    expect(record).toMatchObject({ statusCode: 202, body: '', bodyAt: '/jobs/job-1' });
    const reread = jest.fn(async (location: string) =>
      answer({ id: location.split('/').pop(), state: 'running' }),
    );
    const replay = await store().run('alice', 'k3', 'POST /big', work, { reread, now });
    expect(reread).toHaveBeenCalledWith('/jobs/job-1');
    expect(replay).toMatchObject({
      replayed: true,
      statusCode: 202,
      body: '{"id":"job-1","state":"running"}',
      headers: { location: '/jobs/job-1' },
    });
  });

  it('does not keep a large answer that names no resource, nor a 5xx', async () => {
    const work = async (): Promise<StoredResponse> => ({
      statusCode: 422,
      body: JSON.stringify({ error: { message: 'y'.repeat(INLINE_BODY_BYTES) } }),
      headers: {},
    });
    await store().run('alice', 'k4', 'POST /err', work, { reread: noReread, now });
    expect(await recordOf('alice', 'k4')).toBeUndefined();
    await store().run(
      'alice',
      'k5',
      'POST /err',
      async () => ({ statusCode: 503, body: '{}', headers: {} }),
      {
        reread: noReread,
        now,
      },
    );
    expect(await recordOf('alice', 'k5')).toBeUndefined();
  });
});
