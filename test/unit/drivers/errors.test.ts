import {
  DriverConflictError,
  DriverError,
  DriverInputError,
  DriverUnavailableError,
  driverErrorFromHostError,
  HostOperationError,
  ObjectNotFoundError,
  toHostError,
  UnsupportedOperationError,
} from '../../../drivers/sdk/errors.js';

describe('driver errors', () => {
  it('set name, code, retryable, context and keep the cause', () => {
    const cause = new Error('ECONNRESET');

    const error = new DriverUnavailableError('share went away', { cause, context: { hostId: 'h1' } });

    expect(error).toBeInstanceOf(DriverError);
    expect(error.name).toBe('DriverUnavailableError');
    expect(error.code).toBe('Unavailable');
    expect(error.retryable).toBe(true);
    expect(error.cause).toBe(cause);
    expect(error.context).toEqual({ hostId: 'h1' });
  });

  it('carry the host report in HostOperationError', () => {
    const report = { code: 'DeadlineExceeded', message: 'too slow', retryable: true };

    const error = new HostOperationError(report);

    expect(error.hostError).toEqual(report);
    expect(error.code).toBe('DeadlineExceeded');
    expect(error.retryable).toBe(true);
  });

  describe('the round trip over the wire', () => {
    it.each([
      [new DriverInputError('bad'), DriverInputError],
      [new ObjectNotFoundError('gone'), ObjectNotFoundError],
      [new DriverConflictError('taken'), DriverConflictError],
      [new DriverUnavailableError('later'), DriverUnavailableError],
      [new UnsupportedOperationError('no'), UnsupportedOperationError],
    ])('brings %p back as the same class', (original, type) => {
      const back = driverErrorFromHostError(toHostError(original));

      expect(back).toBeInstanceOf(type);
      expect(back.message).toBe(original.message);
      expect(back.cause).toBeInstanceOf(HostOperationError);
    });

    it('keeps unknown codes as HostOperationError', () => {
      const back = driverErrorFromHostError({ code: 'QemuFailed', message: 'x', retryable: false });

      expect(back).toBeInstanceOf(HostOperationError);
      expect(back.code).toBe('QemuFailed');
    });

    it('reports a plain Error with the fallback code, not retryable', () => {
      expect(toHostError(new Error('boom'))).toEqual({
        code: 'HostOperationFailed',
        message: 'boom',
        retryable: false,
      });
    });
  });
});
