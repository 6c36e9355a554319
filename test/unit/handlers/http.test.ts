import { z } from 'zod';
import { DriverInputError, HostOperationError, ObjectNotFoundError } from '../../../drivers/sdk/errors';
import {
  ConflictError,
  InputError,
  NotAllowedError,
  NotFoundError,
  PayloadTooLargeError,
  UnavailableError,
  UnprocessableError,
} from '../../../functions/core/errors';
import { StoreBusyError } from '../../../functions/core/services/store-flows';
import { errorResponse, inputErrorFromZod } from '../../../functions/handlers/http';
import { workflowErrorName } from '../../../functions/handlers/workflow-errors';

const silent = () => undefined;

describe('errorResponse', () => {
  it.each([
    [new InputError('bad', { field: 'name' }), 400, 'InvalidInput'],
    [new UnprocessableError('no', { field: 'scope.hostId' }), 422, 'Unprocessable'],
    [new NotFoundError('gone'), 404, 'NotFound'],
    [new ConflictError('race', { state: 'Up' }), 409, 'Conflict'],
    [new NotAllowedError('in use'), 409, 'NotAllowed'],
    [new PayloadTooLargeError('big'), 413, 'PayloadTooLarge'],
    [new UnavailableError('later'), 503, 'Unavailable'],
    [new DriverInputError('bad path'), 400, 'InvalidInput'],
    [new ObjectNotFoundError('no file'), 404, 'ObjectNotFound'],
  ])('maps %p to %i with code %s', (error, status, code) => {
    const res = errorResponse(error, silent);
    expect(res.statusCode).toBe(status);
    expect(JSON.parse(res.body).error.code).toBe(code);
  });

  it('names the field and the current state', () => {
    expect(
      JSON.parse(errorResponse(new InputError('bad', { field: 'scope.zoneId' }), silent).body).error.field,
    ).toBe('scope.zoneId');
    expect(
      JSON.parse(errorResponse(new ConflictError('x', { state: 'Maintenance' }), silent).body).error.state,
    ).toBe('Maintenance');
  });

  it('hides unknown errors behind a 500 and logs them', () => {
    const logged: unknown[] = [];
    const res = errorResponse(new TypeError('secret detail'), (f) => logged.push(f));
    expect(res.statusCode).toBe(500);
    expect(res.body).not.toContain('secret detail');
    expect(logged).toHaveLength(1);
  });
});

describe('inputErrorFromZod', () => {
  const schema = z.object({ scope: z.object({ zoneId: z.string() }).strict() }).strict();

  it('names a nested field', () => {
    const r = schema.safeParse({ scope: { zoneId: 5 } });
    expect(inputErrorFromZod(r.error!).context.field).toBe('scope.zoneId');
  });

  it('names an unknown field', () => {
    const r = schema.safeParse({ scope: { zoneId: 'z' }, colour: 'red' });
    const e = inputErrorFromZod(r.error!);
    expect(e.context.field).toBe('colour');
    expect(e.message).toBe('colour: unknown field');
  });
});

describe('workflowErrorName', () => {
  it('marks transient failures for retry and keeps driver codes', () => {
    expect(workflowErrorName(new StoreBusyError('busy'))).toBe('Strata.StoreBusy');
    expect(workflowErrorName(new UnavailableError('later'))).toBe('Strata.Unavailable');
    expect(
      workflowErrorName(new HostOperationError({ code: 'HostProcessDied', message: 'x', retryable: true })),
    ).toBe('Strata.Unavailable');
    expect(
      workflowErrorName(new HostOperationError({ code: 'NotWritable', message: 'x', retryable: false })),
    ).toBe('Strata.NotWritable');
    expect(workflowErrorName(new ConflictError('x'))).toBe('Strata.Conflict');
    expect(workflowErrorName(new Error('x'))).toBe('Strata.Internal');
  });

  it('retries AWS throttling and server errors instead of failing the flow', () => {
    const sdkError = (name: string, fields: Record<string, unknown>) =>
      Object.assign(new Error(name), { name, $metadata: {}, ...fields });
    expect(
      workflowErrorName(
        sdkError('ProvisionedThroughputExceededException', { $retryable: { throttling: true } }),
      ),
    ).toBe('Strata.Unavailable');
    expect(workflowErrorName(sdkError('ThrottlingException', {}))).toBe('Strata.Unavailable');
    expect(workflowErrorName(sdkError('InternalServerError', { $metadata: { httpStatusCode: 500 } }))).toBe(
      'Strata.Unavailable',
    );
    expect(workflowErrorName(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }))).toBe(
      'Strata.Unavailable',
    );
    // A refusal is not passing trouble: it goes to the flow's Catch.
    expect(workflowErrorName(sdkError('AccessDeniedException', { $metadata: { httpStatusCode: 400 } }))).toBe(
      'Strata.Internal',
    );
  });
});
