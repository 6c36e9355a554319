import { describePoint, LocalFaults, type TraceEvent } from '../../../infra/local/faults';

const write = (operation: string) => ({ service: 'dynamodb', operation });

describe('LocalFaults.pointsOf', () => {
  it('makes every write, the answer and the execution of an invocation a point, and each host command two', () => {
    const trace: TraceEvent[] = [
      {
        kind: 'invocation',
        fn: 'StoreTasks',
        step: 'createOnPool',
        ordinal: 1,
        writes: [write('UpdateItem')],
      },
      { kind: 'host-command', command: 1, host: 'mi-1', operation: 'create' },
    ];
    expect(LocalFaults.pointsOf(trace).map(describePoint)).toEqual([
      'StoreTasks:createOnPool#1 killed before write 1 (UpdateItem)',
      'StoreTasks:createOnPool#1 killed before it answered',
      'StoreTasks:createOnPool#1 answered, then the execution was lost',
      'host command 1 (create) killed as it started',
      'host command 1 (create) ran, its result lost',
    ]);
  });

  it('takes a step run again with the same writes (a poll turning) once, and one with other writes again', () => {
    const poll = (ordinal: number, writes: string[]): TraceEvent => ({
      kind: 'invocation',
      fn: 'StoreTasks',
      step: 'policyJobStatus',
      ordinal,
      writes: writes.map(write),
    });
    const points = LocalFaults.pointsOf([
      poll(1, ['UpdateItem']),
      poll(2, ['UpdateItem']),
      poll(3, ['UpdateItem']),
      poll(4, ['UpdateItem', 'PutItem']),
    ]).map(describePoint);
    expect(points.filter((p) => p.includes('#1'))).toHaveLength(3);
    expect(points.filter((p) => p.includes('#2') || p.includes('#3'))).toEqual([]);
    expect(points.filter((p) => p.includes('#4'))).toHaveLength(4);
  });
});
