import { ConflictError } from '../../../functions/core/errors';
import {
  assertTransition,
  canTransition,
  dataStoreMachine,
  hostMachine,
  isLeased,
  objectInStoreMachine,
  type StateMachine,
  snapshotMachine,
  volumeMachine,
} from '../../../functions/core/state-machines';

const machines: StateMachine<string>[] = [
  hostMachine,
  dataStoreMachine,
  objectInStoreMachine,
  volumeMachine,
  snapshotMachine,
];

describe('state machines', () => {
  describe.each(machines.map((m) => [m.name, m] as const))('%s', (_name, machine) => {
    it('only names known states as targets', () => {
      const states = new Set(Object.keys(machine.transitions));
      for (const targets of Object.values(machine.transitions)) {
        for (const t of targets) expect(states).toContain(t);
      }
    });

    it('recovers every transitional state to a state that can be acted on again', () => {
      for (const [state, recovery] of Object.entries(machine.leased)) {
        expect(canTransition(machine, state, recovery as string)).toBe(true);
        expect(machine.transitions[recovery as string]?.length).toBeGreaterThan(0);
      }
    });
  });

  it('follows the CloudStack object-in-store machine', () => {
    expect(canTransition(objectInStoreMachine, 'Allocated', 'Creating')).toBe(true);
    expect(canTransition(objectInStoreMachine, 'Creating', 'Ready')).toBe(true);
    expect(canTransition(objectInStoreMachine, 'Creating', 'Allocated')).toBe(true);
    expect(canTransition(objectInStoreMachine, 'Ready', 'Copying')).toBe(true);
    expect(canTransition(objectInStoreMachine, 'Failed', 'Destroying')).toBe(true);
    expect(canTransition(objectInStoreMachine, 'Allocated', 'Ready')).toBe(false);
    expect(canTransition(objectInStoreMachine, 'Destroyed', 'Ready')).toBe(false);
  });

  it('leases exactly the transitional store states', () => {
    expect(isLeased(dataStoreMachine, 'Initializing')).toBe(true);
    expect(isLeased(dataStoreMachine, 'PrepareForMaintenance')).toBe(true);
    expect(isLeased(dataStoreMachine, 'Up')).toBe(false);
    expect(isLeased(dataStoreMachine, 'Maintenance')).toBe(false);
  });

  it('rejects an illegal transition with a conflict naming both states', () => {
    expect(() => assertTransition(volumeMachine, 'Destroyed', 'Ready', { id: 'vol-1' })).toThrow(
      ConflictError,
    );
    try {
      assertTransition(volumeMachine, 'Destroyed', 'Ready');
    } catch (e) {
      expect((e as ConflictError).message).toBe('Volume cannot go from Destroyed to Ready');
      expect((e as ConflictError).context).toMatchObject({ from: 'Destroyed', to: 'Ready' });
    }
  });
});
