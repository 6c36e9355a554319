import { StepScope } from '../../../functions/core/step-scope.js';

describe('StepScope call keys', () => {
  it('numbers the calls of each operation in order, the same on every run', () => {
    const keys = (scope: StepScope) => [
      scope.nextCallKey('copy'),
      scope.nextCallKey('probe'),
      scope.nextCallKey('copy'),
    ];
    expect(keys(new StepScope('CreateOnPool', 1000))).toEqual([
      'CreateOnPool:copy:0',
      'CreateOnPool:probe:0',
      'CreateOnPool:copy:1',
    ]);
    expect(keys(new StepScope('CreateOnPool', 1000))).toEqual(keys(new StepScope('CreateOnPool', 1000)));
  });

  it('keys a named call by its name, without moving the numbering of the others', () => {
    // A renewal made on one run only: the wait after it keeps the key it has on every other run.
    const once = new StepScope('CreateOnPool', 1000);
    expect(once.nextCallKey('lazyRestoreStatus', 'renewal-1')).toBe(
      'CreateOnPool:lazyRestoreStatus:renewal-1',
    );
    expect(once.nextCallKey('lazyRestoreStatus')).toBe('CreateOnPool:lazyRestoreStatus:0');
    const other = new StepScope('CreateOnPool', 1000);
    expect(other.nextCallKey('lazyRestoreStatus')).toBe('CreateOnPool:lazyRestoreStatus:0');
  });
});
