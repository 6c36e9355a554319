/**
 * State machines of stored objects as transition tables. The repository checks a transition here
 * before it writes, and the write itself is conditional on the expected state and version, so an
 * illegal or lost-race transition always ends in a ConflictError and never in a half-written row.
 */
import { ConflictError } from './errors.js';
import {
  DataStoreStatus as DS,
  HostStatus as H,
  ObjectInStoreStatus as O,
  SnapshotStatus as S,
  VolumeStatus as V,
} from './model.js';

export interface StateMachine<State extends string> {
  name: string;
  /** For each state, the states it may move to. */
  transitions: Readonly<Record<State, readonly State[]>>;
  /**
   * Transitional states. Entering one requires a lease; when the lease expires the reconciler moves
   * the entity to the state given here, which is always one an operator can act on again.
   */
  leased: Readonly<Partial<Record<State, State>>>;
}

export const dataStoreMachine: StateMachine<DS> = {
  name: 'DataStore',
  transitions: {
    [DS.Initializing]: [DS.Up, DS.Error],
    [DS.Up]: [DS.Disabled, DS.PrepareForMaintenance, DS.Deleting],
    [DS.Disabled]: [DS.Up, DS.PrepareForMaintenance, DS.Deleting],
    [DS.PrepareForMaintenance]: [DS.Maintenance, DS.ErrorInMaintenance],
    [DS.ErrorInMaintenance]: [DS.PrepareForMaintenance, DS.CancelMaintenance, DS.Deleting],
    [DS.Maintenance]: [DS.CancelMaintenance, DS.Deleting],
    [DS.CancelMaintenance]: [DS.Up, DS.Maintenance, DS.ErrorInMaintenance],
    // Deleting can fall back to where it came from when a last check finds the store still in use.
    [DS.Deleting]: [DS.Error, DS.Up, DS.Disabled, DS.Maintenance, DS.ErrorInMaintenance],
    [DS.Error]: [DS.Initializing, DS.Deleting],
  },
  leased: {
    [DS.Initializing]: DS.Error,
    [DS.PrepareForMaintenance]: DS.ErrorInMaintenance,
    [DS.CancelMaintenance]: DS.Maintenance,
    [DS.Deleting]: DS.Error,
  },
};

export const hostMachine: StateMachine<H> = {
  name: 'Host',
  transitions: {
    [H.Up]: [H.Disabled, H.Down],
    [H.Disabled]: [H.Up],
    [H.Down]: [H.Up, H.Disabled],
  },
  leased: {},
};

export const objectInStoreMachine: StateMachine<O> = {
  name: 'ObjectInStore',
  transitions: {
    [O.Allocated]: [O.Creating, O.Destroying],
    [O.Creating]: [O.Ready, O.Allocated, O.Failed],
    [O.Ready]: [O.Copying, O.Destroying],
    [O.Copying]: [O.Ready],
    [O.Failed]: [O.Creating, O.Destroying],
    [O.Destroying]: [O.Destroyed, O.Failed],
    [O.Destroyed]: [],
  },
  leased: {
    [O.Creating]: O.Allocated,
    [O.Copying]: O.Ready,
    [O.Destroying]: O.Failed,
  },
};

export const volumeMachine: StateMachine<V> = {
  name: 'Volume',
  transitions: {
    [V.Allocated]: [V.Creating, V.Destroying],
    [V.Creating]: [V.Ready, V.Allocated, V.Error, V.Hydrating],
    [V.Hydrating]: [V.Ready, V.Error],
    [V.Ready]: [V.Resizing, V.Snapshotting, V.RevertSnapshotting, V.Migrating, V.Destroying],
    [V.Resizing]: [V.Ready, V.Error],
    [V.Snapshotting]: [V.Ready],
    [V.RevertSnapshotting]: [V.Ready, V.Error],
    [V.Migrating]: [V.Ready, V.Error],
    [V.Destroying]: [V.Destroyed, V.Error],
    [V.Destroyed]: [],
    [V.Error]: [V.Destroying, V.Ready],
  },
  leased: {
    [V.Creating]: V.Error,
    [V.Hydrating]: V.Error,
    [V.Resizing]: V.Error,
    [V.Snapshotting]: V.Ready,
    [V.RevertSnapshotting]: V.Error,
    // The source copy is kept until the destination is verified, so the volume is still whole.
    [V.Migrating]: V.Ready,
    [V.Destroying]: V.Error,
  },
};

export const snapshotMachine: StateMachine<S> = {
  name: 'Snapshot',
  transitions: {
    [S.Allocated]: [S.Creating, S.Destroying],
    [S.Creating]: [S.CreatedOnPrimary, S.Error],
    [S.CreatedOnPrimary]: [S.BackingUp, S.Destroying],
    [S.BackingUp]: [S.BackedUp, S.CreatedOnPrimary],
    [S.BackedUp]: [S.Destroying],
    // Back to what the copies left make it, when only one of two copies was deleted or a
    // delete was refused before touching anything.
    [S.Destroying]: [S.Destroyed, S.Error, S.CreatedOnPrimary, S.BackedUp],
    [S.Destroyed]: [],
    [S.Error]: [S.Destroying],
  },
  leased: {
    [S.Creating]: S.Error,
    [S.BackingUp]: S.CreatedOnPrimary,
    [S.Destroying]: S.Error,
  },
};

export function canTransition<State extends string>(m: StateMachine<State>, from: State, to: State): boolean {
  return m.transitions[from]?.includes(to) ?? false;
}

export function isLeased<State extends string>(m: StateMachine<State>, state: State): boolean {
  return m.leased[state] !== undefined;
}

/** Throws a ConflictError naming both states when `from → to` is not in the table. */
export function assertTransition<State extends string>(
  m: StateMachine<State>,
  from: State,
  to: State,
  context: Record<string, unknown> = {},
): void {
  if (!canTransition(m, from, to)) {
    throw new ConflictError(`${m.name} cannot go from ${from} to ${to}`, {
      ...context,
      from,
      to,
      state: from,
    });
  }
}
