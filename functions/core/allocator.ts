/**
 * The StoragePoolAllocator: which primary store a new object (a volume, a resize's extra bytes)
 * goes to, why every other store was passed over, and the atomic reservation of the space.
 *
 * Planning ({@link planPlacement}) is pure, so `POST /volumes?dryRun=true` can show exactly the
 * decision a real create would make. Reserving ({@link reserve}) is where races are settled: the
 * plan was made from a read that may already be stale, so the bound is checked again, atomically,
 * by the table (`Repository.addToCounter` with `max`), and a store that filled up in between is
 * skipped for the next acceptable one.
 */
import { ConflictError, InputError, NotFoundError, StrataError, UnprocessableError } from './errors.js';
import type { DataStore } from './model.js';
import { DataStoreStatus } from './model.js';
import { type Repository, Write, type WriteOp } from './ports.js';

/** What is being placed and under which constraints. */
export interface PlacementRequest {
  zoneId: string;
  /**
   * The volume must sit where this cluster's hosts reach it: cluster-scoped stores of other clusters
   * are rejected. Without it, a cluster-scoped store of any cluster in the zone is acceptable.
   */
  clusterId?: string;
  /**
   * The host the volume is for. Host-scoped (local) stores are accepted only for their own host.
   * This does not imply a cluster: pass the host's `clusterId` too when cluster-scoped stores of
   * other clusters must be rejected.
   */
  hostId?: string;
  /** Bytes to reserve (a positive integer). */
  sizeBytes: number;
  /** Every tag must be on the store (the store may have more). */
  tags?: string[];
  /** The operator pinned a store: only it is eligible, and it is still checked and explained. */
  storeId?: string;
  /** Stores never to choose, e.g. the volume's current store during a migration. */
  excludeStoreIds?: string[];
}

/** One store's verdict. */
export interface Candidate {
  storeId: string;
  name: string;
  accepted: boolean;
  /**
   * For people: why it was chosen, kept as a fallback, or rejected, e.g. `rejected: status
   * Maintenance`, `rejected: missing tags ssd`, `rejected: needs 10.0 GiB, only 2.0 GiB left under
   * the 85% threshold of 200.0 GiB (capacity 100.0 GiB × overprovisioning 2)`.
   */
  reason: string;
  /** Bytes left under the threshold once this object is placed (accepted candidates only). */
  freeBytesAfter?: number;
  /**
   * The store's threshold limit in bytes (accepted candidates only): the `max` the reservation
   * holds `allocatedBytes` to.
   */
  thresholdBytes?: number;
}

/** The decision: the chosen store (if any) and every primary store considered, chosen first. */
export interface Placement {
  chosen?: Candidate;
  /**
   * Chosen first, then the other accepted stores in order of preference (the fallbacks
   * {@link reserve} tries when it loses a race), then the rejected ones in input order.
   */
  candidates: Candidate[];
}

/** A store's capacity bounds, derived from its capacity, overprovisioning and disable threshold. */
export interface CapacityLimits {
  /** capacity × overprovisioning: what the store may promise in all. */
  allocationLimitBytes: number;
  /** allocation limit × disable threshold, in whole bytes: past this nothing new is placed. */
  thresholdBytes: number;
}

const GiB = 1024 ** 3;

/**
 * Bytes as GiB with one decimal, for reasons people read.
 *
 * @example formatGiB(10 * 1024 ** 3) // '10.0 GiB'
 */
export function formatGiB(bytes: number): string {
  return `${(bytes / GiB).toFixed(1)} GiB`;
}

/**
 * The store's allocation and threshold limits.
 *
 * @example capacityLimits(store) // { allocationLimitBytes: 200 GiB, thresholdBytes: 170 GiB }
 */
export function capacityLimits(
  store: Pick<DataStore, 'capacityBytes' | 'overprovisioning' | 'disableThreshold'>,
): CapacityLimits {
  const allocationLimitBytes = store.capacityBytes * store.overprovisioning;
  // Floored so the bound handed to DynamoDB is a whole number of bytes. The product of three doubles
  // can land a few ulps under an exact integer (a 0.85 threshold is not exact in binary); the nudge
  // keeps such a result from flooring one byte short, which would make "exactly at the limit" fail.
  const exact = allocationLimitBytes * store.disableThreshold;
  const thresholdBytes = Math.floor(exact * (1 + 4 * Number.EPSILON));
  return { allocationLimitBytes, thresholdBytes };
}

/**
 * Decides where `request.sizeBytes` would go among `stores`, and says why about every primary store.
 * Pure: reads nothing, writes nothing; {@link reserve} makes it real.
 *
 * A store is accepted when all hold:
 * - role `primary`, not excluded, and the pinned store if one is pinned;
 * - in scope: zone-scoped in `request.zoneId`; cluster-scoped in that zone and, when a cluster is
 *   requested, that cluster; host-scoped only for the requested host (local storage binds the
 *   volume to one host, so it is never picked for a request that names none — unless the operator
 *   pinned that very store, which says the binding is wanted);
 * - status `Up` (not Disabled, in or entering maintenance, Error, Initializing, …);
 * - carries every requested tag;
 * - known capacity, and `allocatedBytes + sizeBytes ≤ capacity × overprovisioning × disableThreshold`.
 *
 * Scope, exclusion and pinning are reported alone (the store is out of the question, its status is
 * noise); status, tags and capacity are all reported together, so one look tells an operator
 * everything that keeps a store out.
 *
 * Choice: among accepted stores, the most free space after placement (ties: fewest allocated bytes,
 * then id). Placing on the emptiest store spreads load and keeps every pool clear of its threshold
 * as long as possible, like CloudStack's `firstfitleastconsumed` allocation without shuffling. No
 * randomness, so a dry run explains exactly what the real create will do given the same reads.
 *
 * @example
 * const { chosen, candidates } = planPlacement(stores, { zoneId: 'z1', sizeBytes: 10 * 1024 ** 3, tags: ['ssd'] });
 * // chosen?.reason === 'chosen: most free space after placement (160.0 GiB left under …)'
 * // candidates[1].reason === 'rejected: missing tags ssd'
 */
export function planPlacement(stores: readonly DataStore[], request: PlacementRequest): Placement {
  assertSize(request.sizeBytes);
  const excluded = new Set(request.excludeStoreIds ?? []);
  const accepted: Candidate[] = [];
  const rejected: Candidate[] = [];
  let pinnedSeen = false;

  for (const store of stores) {
    const pinned = request.storeId !== undefined && store.id === request.storeId;
    if (pinned) pinnedSeen = true;
    // Image stores are not candidates at all; only a pinned one earns an explanation, since the
    // operator asked for it by name.
    if (store.role !== 'primary') {
      if (pinned) rejected.push(reject(store, `${store.role} store; volumes need a primary store`));
      continue;
    }
    const verdict = judge(store, request, excluded, pinned);
    if ('rejection' in verdict) rejected.push(reject(store, verdict.rejection));
    else accepted.push(verdict.candidate);
  }
  if (request.storeId !== undefined && !pinnedSeen) {
    rejected.unshift({
      storeId: request.storeId,
      name: request.storeId,
      accepted: false,
      reason: 'rejected: no such store',
    });
  }

  accepted.sort(byPreference(stores));
  const [chosen, ...fallbacks] = accepted;
  if (!chosen) return { candidates: rejected };

  const why =
    request.storeId !== undefined
      ? 'pinned by the operator'
      : fallbacks.length === 0
        ? 'the only store with room'
        : 'most free space after placement';
  chosen.reason = `chosen: ${why} (${chosen.reason})`;
  fallbacks.forEach((c, i) => {
    c.reason = `accepted: fallback ${i + 1}, less free space after placement (${c.reason})`;
  });
  return { chosen, candidates: [chosen, ...fallbacks, ...rejected] };
}

/** Either the accepted candidate (reason holds the free-space detail only) or why not. */
type Verdict = { candidate: Candidate } | { rejection: string };

function judge(store: DataStore, request: PlacementRequest, excluded: Set<string>, pinned: boolean): Verdict {
  if (excluded.has(store.id)) return { rejection: 'excluded by the request' };
  if (request.storeId !== undefined && !pinned)
    return { rejection: `not the pinned store ${request.storeId}` };
  const outOfScope = scopeProblem(store, request, pinned);
  if (outOfScope) return { rejection: outOfScope };

  const problems: string[] = [];
  if (store.status !== DataStoreStatus.Up) {
    problems.push(`status ${store.status}${store.statusReason ? ` (${store.statusReason})` : ''}`);
  }
  const tags = new Set(store.tags);
  const missing = (request.tags ?? []).filter((t) => !tags.has(t));
  if (missing.length > 0) problems.push(`missing tags ${missing.join(', ')}`);
  const room = roomFor(store, request.sizeBytes);
  if ('problem' in room) problems.push(room.problem);
  if (problems.length > 0 || 'problem' in room) return { rejection: problems.join('; ') };

  return {
    candidate: {
      storeId: store.id,
      name: store.name,
      accepted: true,
      reason: `${formatGiB(room.freeBytesAfter)} left ${room.under}`,
      freeBytesAfter: room.freeBytesAfter,
      thresholdBytes: room.thresholdBytes,
    },
  };
}

function scopeProblem(store: DataStore, request: PlacementRequest, pinned: boolean): string | undefined {
  const { scope } = store;
  if (scope.zoneId !== request.zoneId) return `not in zone ${request.zoneId} (it is in ${scope.zoneId})`;
  switch (scope.type) {
    case 'zone':
      return undefined;
    case 'cluster':
      if (request.clusterId !== undefined && scope.clusterId !== request.clusterId) {
        return `cluster-scoped to ${scope.clusterId ?? '(no cluster)'}, the volume needs cluster ${request.clusterId}`;
      }
      return undefined;
    case 'host':
      if (request.hostId !== undefined) {
        return scope.hostId === request.hostId
          ? undefined
          : `host-local to ${scope.hostId ?? '(no host)'}, the volume is for host ${request.hostId}`;
      }
      return pinned ? undefined : `host-local to ${scope.hostId ?? '(no host)'} and no host was requested`;
    default:
      // A scope type this code does not know: refusing is the safe side.
      return `unknown scope type ${String((scope as { type: unknown }).type)}`;
  }
}

type Room =
  | { freeBytesAfter: number; thresholdBytes: number; under: string }
  | { problem: string; thresholdBytes?: number };

function roomFor(store: DataStore, sizeBytes: number): Room {
  if (!(store.capacityBytes > 0)) return { problem: 'capacity unknown (the store reports 0 bytes)' };
  if (!(store.overprovisioning > 0)) {
    return { problem: `overprovisioning factor ${store.overprovisioning} is not positive` };
  }
  if (!(store.disableThreshold > 0 && store.disableThreshold <= 1)) {
    return { problem: `disable threshold ${store.disableThreshold} is outside (0, 1]` };
  }
  const { allocationLimitBytes, thresholdBytes } = capacityLimits(store);
  const percent = `${Number((store.disableThreshold * 100).toFixed(2))}%`;
  const under =
    `under the ${percent} threshold of ${formatGiB(allocationLimitBytes)} ` +
    `(capacity ${formatGiB(store.capacityBytes)} × overprovisioning ${store.overprovisioning})`;
  const left = Math.max(0, thresholdBytes - store.allocatedBytes);
  if (store.allocatedBytes + sizeBytes > thresholdBytes) {
    // One decimal of GiB can hide a shortfall of a few bytes; say it exactly then.
    const short =
      formatGiB(sizeBytes) === formatGiB(left)
        ? ` — ${store.allocatedBytes + sizeBytes - thresholdBytes} bytes short`
        : '';
    return {
      problem: `needs ${formatGiB(sizeBytes)}, only ${formatGiB(left)} left ${under}${short}`,
      thresholdBytes,
    };
  }
  return { freeBytesAfter: thresholdBytes - store.allocatedBytes - sizeBytes, thresholdBytes, under };
}

function byPreference(stores: readonly DataStore[]): (a: Candidate, b: Candidate) => number {
  const allocated = new Map(stores.map((s) => [s.id, s.allocatedBytes]));
  return (a, b) =>
    (b.freeBytesAfter ?? 0) - (a.freeBytesAfter ?? 0) ||
    (allocated.get(a.storeId) ?? 0) - (allocated.get(b.storeId) ?? 0) ||
    (a.storeId < b.storeId ? -1 : a.storeId > b.storeId ? 1 : 0);
}

function reject(store: Pick<DataStore, 'id' | 'name'>, why: string): Candidate {
  return { storeId: store.id, name: store.name, accepted: false, reason: `rejected: ${why}` };
}

function assertSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw new InputError(`sizeBytes must be a positive whole number of bytes, got ${sizeBytes}`, {
      field: 'sizeBytes',
    });
  }
}

/**
 * Reserves `sizeBytes` on the first accepted candidate that still has room, in the placement's
 * order. Each try is one atomic `addToCounter` bounded by the candidate's threshold, so of several
 * requests racing for a store's last space exactly those that fit get it; a loser (ConflictError)
 * or a store deleted since planning (NotFoundError) moves on to the next candidate.
 *
 * The reservation does not re-check the store's status: a store put into maintenance after
 * planning can still receive this one object. That window is closed by the maintenance flow,
 * which waits for objects in flight on the store (CheckStoreIdle) before it is in Maintenance.
 *
 * @returns the store as updated by the reservation, and every candidate tried with its outcome
 *   (lost races rejected with the reason, the winner last).
 * @throws UnprocessableError (`field: 'sizeBytes'`) when no candidate is left; its message and
 *   context name every candidate's reason.
 *
 * @example
 * const placement = planPlacement(stores, request);
 * const { store } = await reserve(repo, placement, request.sizeBytes);
 */
export async function reserve(
  repo: Repository,
  placement: Placement | readonly Candidate[],
  sizeBytes: number,
  options: {
    /**
     * Writes that must happen together with the reservation on the chosen store (the volume row that
     * owns the space): one transaction, so a crash never leaves space reserved for nothing. A failed
     * condition of these writes is thrown as it is; it does not move on to the next candidate.
     */
    with?: (storeId: string) => WriteOp[];
  } = {},
): Promise<{ store: DataStore; attempts: Candidate[] }> {
  assertSize(sizeBytes);
  const candidates = 'candidates' in placement ? placement.candidates : placement;
  const attempts: Candidate[] = [];
  for (const candidate of candidates) {
    if (!candidate.accepted || candidate.thresholdBytes === undefined) continue;
    const storeKey = { type: 'DataStore' as const, id: candidate.storeId };
    try {
      let store: DataStore;
      if (options.with) {
        await repo.transact([
          Write.counter(storeKey, 'allocatedBytes', sizeBytes, { max: candidate.thresholdBytes }),
          ...options.with(candidate.storeId),
        ]);
        store = await repo.require(storeKey);
      } else {
        store = await repo.addToCounter(storeKey, 'allocatedBytes', sizeBytes, {
          max: candidate.thresholdBytes,
        });
      }
      attempts.push({ ...candidate, freeBytesAfter: candidate.thresholdBytes - store.allocatedBytes });
      return { store, attempts };
    } catch (e) {
      const aboutStore =
        e instanceof StrataError && e.context.type === 'DataStore' && e.context.id === candidate.storeId;
      if (!aboutStore) throw e;
      if (e instanceof ConflictError) {
        attempts.push({
          ...dropRoom(candidate),
          reason: `rejected: lost the race for the space (${e.message})`,
        });
      } else if (e instanceof NotFoundError) {
        attempts.push({ ...dropRoom(candidate), reason: 'rejected: the store no longer exists' });
      } else {
        throw e;
      }
    }
  }

  // Report the final word on every store: race outcomes replace the plan's verdicts.
  const tried = new Map(attempts.map((a) => [a.storeId, a]));
  const final = candidates.map((c) => tried.get(c.storeId) ?? c);
  const detail = final.length
    ? final.map((c) => `${c.name} (${c.storeId}): ${c.reason}`).join('; ')
    : 'no primary store';
  throw new UnprocessableError(`no primary store can take ${formatGiB(sizeBytes)}: ${detail}`, {
    field: 'sizeBytes',
    sizeBytes,
    candidates: final.map(({ storeId, name, reason }) => ({ storeId, name, reason })),
  });
}

function dropRoom(candidate: Candidate): Candidate {
  const { freeBytesAfter: _free, thresholdBytes: _threshold, ...rest } = candidate;
  return { ...rest, accepted: false };
}

/**
 * The write that gives back `sizeBytes` reserved on a store (volume deleted, shrunk, moved away, or
 * its create failed), for a {@link Repository.transact} with the write that stops the volume owning
 * the space, so a replay never gives it back twice.
 *
 * The table refuses to go below zero (a ConflictError naming the store): if that happens the
 * accounting is already wrong, and the step fails loudly instead of hiding the drift.
 *
 * @example await repo.transact([releaseWrite(volume.storeId, volume.sizeBytes), Write.update(...)]);
 */
export function releaseWrite(storeId: string, sizeBytes: number): WriteOp {
  assertSize(sizeBytes);
  return Write.counter({ type: 'DataStore', id: storeId }, 'allocatedBytes', -sizeBytes);
}
