import { GetObjectCommand, NoSuchKey, S3Client } from '@aws-sdk/client-s3';
import {
  GetCommandInvocationCommand,
  type GetCommandInvocationCommandOutput,
  InvocationDoesNotExist,
  SendCommandCommand,
  SSMClient,
} from '@aws-sdk/client-ssm';
import { mockClient } from 'aws-sdk-client-mock';
import { decodeHostRequest, type HostRequest } from '../../../../drivers/sdk/host-protocol.js';
import {
  HOST_REQUEST_ALLOWED_PATTERN,
  HOST_REQUEST_MAX_BASE64_CHARS,
  HOST_STEP_NAME,
  OUTPUT_UPLOAD_GRACE_MS,
  parseS3Url,
  SSM_INLINE_OUTPUT_LIMIT,
  SsmEndpointChannel,
} from '../../../../functions/adapters/aws/ssm-channel.js';
import { InputError, PayloadTooLargeError } from '../../../../functions/core/errors.js';
import type { Host } from '../../../../functions/core/model.js';

const ssm = mockClient(SSMClient);
const s3 = mockClient(S3Client);

const host: Host = {
  id: 'host-1',
  name: 'kvm-01',
  zoneId: 'zone-1',
  clusterId: 'cluster-1',
  instanceId: 'mi-0123456789abcdef0',
  hypervisor: 'kvm',
  status: 'Up',
  attachedStoreIds: [],
  version: 1,
  createdAt: '2024-01-01T00:00:00.000Z',
  updatedAt: '2024-01-01T00:00:00.000Z',
};

const request: HostRequest = {
  version: 1,
  requestId: 'req-1',
  jobId: 'job-01HZX',
  hostId: 'host-1',
  provider: 'nfs',
  operation: 'volume.create',
  args: { path: "/mnt/x; rm -rf / `whoami` $(id) 'quoted'", sizeBytes: 1024 },
  deadlineSeconds: 600,
};

const COMMAND_ID = '11111111-2222-3333-4444-555555555555';

function channel(overrides: Partial<ConstructorParameters<typeof SsmEndpointChannel>[0]> = {}) {
  return new SsmEndpointChannel({
    client: new SSMClient({ region: 'eu-west-1' }),
    s3Client: new S3Client({ region: 'eu-west-1' }),
    documentName: 'Strata-RunHostOperation',
    outputBucket: 'strata-command-output',
    outputPrefix: 'ssm/',
    ...overrides,
  });
}

function invocation(output: Partial<GetCommandInvocationCommandOutput>) {
  ssm.on(GetCommandInvocationCommand).resolves({ CommandId: COMMAND_ID, ...output });
}

function events(...lines: object[]): string {
  return `${lines.map((line) => JSON.stringify(line)).join('\n')}\n`;
}

/** The slice of the SDK's streaming body that the adapter uses. */
function body(text: string) {
  return { transformToString: async () => text } as never;
}

beforeEach(() => {
  ssm.reset();
  s3.reset();
});

describe('SsmEndpointChannel', () => {
  describe('constructor', () => {
    it('rejects a missing document name', () => {
      expect(() => channel({ documentName: '' })).toThrow(InputError);
    });

    it('rejects a delivery timeout outside what SendCommand accepts', () => {
      expect(() => channel({ timeoutSeconds: 5 })).toThrow(InputError);
    });

    it('builds no client until first use', () => {
      expect(() => new SsmEndpointChannel({ documentName: 'Strata-RunHostOperation' })).not.toThrow();
    });
  });

  describe('send', () => {
    it('sends the request as one base64 parameter of the Strata document', async () => {
      ssm.on(SendCommandCommand).resolves({ Command: { CommandId: COMMAND_ID } });

      const result = await channel({ timeoutSeconds: 120 }).send(host, request);

      expect(result).toEqual({ commandId: COMMAND_ID });
      expect(ssm).toHaveReceivedCommandTimes(SendCommandCommand, 1);
      expect(ssm).toHaveReceivedCommandWith(SendCommandCommand, {
        DocumentName: 'Strata-RunHostOperation',
        InstanceIds: ['mi-0123456789abcdef0'],
        TimeoutSeconds: 120,
        OutputS3BucketName: 'strata-command-output',
        OutputS3KeyPrefix: 'ssm',
      });
      const input = ssm.commandCalls(SendCommandCommand)[0]!.args[0].input;
      expect(Object.keys(input.Parameters ?? {})).toEqual(['Request']);
      const [encoded] = input.Parameters!['Request']!;
      expect(encoded).toMatch(new RegExp(HOST_REQUEST_ALLOWED_PATTERN));
      expect(decodeHostRequest(encoded!)).toEqual(request);
      expect(input.Comment).toContain('job-01HZX');
      expect(input.Comment!.length).toBeLessThanOrEqual(100);
    });

    it('keeps the comment within 100 characters for long job ids', async () => {
      ssm.on(SendCommandCommand).resolves({ Command: { CommandId: COMMAND_ID } });

      await channel().send(host, { ...request, jobId: 'j'.repeat(128) });

      const input = ssm.commandCalls(SendCommandCommand)[0]!.args[0].input;
      expect(input.Comment!.length).toBe(100);
    });

    it('omits the S3 output settings when no output bucket is configured', async () => {
      ssm.on(SendCommandCommand).resolves({ Command: { CommandId: COMMAND_ID } });

      await channel({ outputBucket: undefined, outputPrefix: undefined }).send(host, request);

      const input = ssm.commandCalls(SendCommandCommand)[0]!.args[0].input;
      expect(input.OutputS3BucketName).toBeUndefined();
      expect(input.OutputS3KeyPrefix).toBeUndefined();
    });

    it('rejects a malformed request before calling SSM', async () => {
      const bad = { ...request, requestId: 'bad id; reboot' };

      await expect(channel().send(host, bad)).rejects.toBeInstanceOf(InputError);
      expect(ssm).not.toHaveReceivedCommand(SendCommandCommand);
    });

    it('rejects a host without a managed-instance id', async () => {
      await expect(channel().send({ ...host, instanceId: 'kvm-01; reboot' }, request)).rejects.toBeInstanceOf(
        InputError,
      );
      expect(ssm).not.toHaveReceivedCommand(SendCommandCommand);
    });

    it('rejects a request larger than the document admits', async () => {
      const big = { ...request, args: { blob: 'x'.repeat(HOST_REQUEST_MAX_BASE64_CHARS) } };

      await expect(channel().send(host, big)).rejects.toBeInstanceOf(PayloadTooLargeError);
      expect(ssm).not.toHaveReceivedCommand(SendCommandCommand);
    });
  });

  describe('status', () => {
    it('reports pending while SSM has not registered the invocation yet', async () => {
      ssm
        .on(GetCommandInvocationCommand)
        .rejects(new InvocationDoesNotExist({ message: 'no invocation', $metadata: {} }));

      await expect(channel().status(host, COMMAND_ID)).resolves.toEqual({ state: 'pending' });
    });

    it('asks for the invocation on the host the command went to', async () => {
      invocation({ Status: 'Pending' });

      await channel().status(host, COMMAND_ID);

      expect(ssm).toHaveReceivedCommandWith(GetCommandInvocationCommand, {
        CommandId: COMMAND_ID,
        InstanceId: 'mi-0123456789abcdef0',
      });
    });

    it.each(['Pending', 'Delayed'] as const)('maps %s to pending', async (Status) => {
      invocation({ Status });

      await expect(channel().status(host, COMMAND_ID)).resolves.toEqual({ state: 'pending' });
    });

    it.each(['InProgress', 'Cancelling'] as const)(
      'maps %s to running with the latest progress',
      async (Status) => {
        invocation({
          Status,
          StandardOutputContent: events(
            { type: 'progress', percent: 10 },
            { type: 'progress', percent: 42, detail: { bytes: 420 } },
          ),
        });

        await expect(channel().status(host, COMMAND_ID)).resolves.toEqual({
          state: 'running',
          progress: 42,
          progressDetail: { bytes: 420 },
        });
      },
    );

    it('maps Success with a result event to succeeded', async () => {
      invocation({
        Status: 'Success',
        StandardOutputContent: events(
          { type: 'progress', percent: 50 },
          { type: 'result', ok: true, result: { path: 'vol-1.qcow2' } },
        ),
      });

      await expect(channel().status(host, COMMAND_ID)).resolves.toEqual({
        state: 'succeeded',
        progress: 100,
        result: { path: 'vol-1.qcow2' },
      });
    });

    it('maps Success without a result event to a non-retryable failure', async () => {
      invocation({ Status: 'Success', StandardOutputContent: 'some noise\n' });

      const status = await channel().status(host, COMMAND_ID);

      expect(status).toMatchObject({ state: 'failed', error: { code: 'HostNoResult', retryable: false } });
    });

    it("reports the host's own error when the runtime printed one", async () => {
      const error = { code: 'NoSpace', message: 'pool is full', retryable: false };
      invocation({
        Status: 'Failed',
        StatusDetails: 'Failed',
        ResponseCode: 1,
        StandardOutputContent: events({ type: 'result', ok: false, error }),
      });

      await expect(channel().status(host, COMMAND_ID)).resolves.toEqual({ state: 'failed', error });
    });

    it.each([
      ['Failed', 'Failed', 137, 'SsmCommandFailed', true],
      ['Failed', 'Failed', 127, 'HostRuntimeMissing', false],
      ['Failed', 'Undeliverable', -1, 'SsmUndeliverable', true],
      ['Failed', 'Terminated', -1, 'SsmTerminated', true],
      ['Failed', 'Invalid Platform', -1, 'SsmInvalidPlatform', false],
      ['Failed', 'Access Denied', -1, 'SsmAccessDenied', false],
      ['TimedOut', 'Delivery Timed Out', -1, 'SsmDeliveryTimedOut', true],
      ['TimedOut', 'Execution Timed Out', -1, 'SsmExecutionTimedOut', false],
      ['TimedOut', undefined, -1, 'SsmTimedOut', true],
      ['Cancelled', 'Cancelled', -1, 'SsmCancelled', false],
    ] as const)(
      'maps %s / %s (exit %d) to %s, retryable %s',
      async (Status, StatusDetails, ResponseCode, code, retryable) => {
        invocation({
          Status,
          StatusDetails,
          ResponseCode,
          StandardOutputContent: '',
          StandardErrorContent: 'boom',
        });

        const status = await channel().status(host, COMMAND_ID);

        expect(status.state).toBe('failed');
        expect(status.error).toMatchObject({ code, retryable });
        expect(status.error?.message).toContain('boom');
      },
    );

    it('treats a status it does not know as pending', async () => {
      invocation({ Status: 'SomethingNew' as never });

      await expect(channel().status(host, COMMAND_ID)).resolves.toEqual({ state: 'pending' });
    });

    describe('when SSM truncated stdout', () => {
      const truncated = `${'x'.repeat(SSM_INLINE_OUTPUT_LIMIT - 1)}\n`;
      const full = `${truncated}${events({ type: 'result', ok: true, result: { chunks: 9000 } })}`;

      it('reads the full stdout from the S3 location SSM reports', async () => {
        invocation({
          Status: 'Success',
          StandardOutputContent: truncated,
          StandardOutputUrl: `https://s3.eu-west-1.amazonaws.com/strata-command-output/ssm/${COMMAND_ID}/mi-0123456789abcdef0/awsrunShellScript/${HOST_STEP_NAME}/stdout`,
        });
        s3.on(GetObjectCommand).resolves({ Body: body(full) });

        const status = await channel().status(host, COMMAND_ID);

        expect(status).toEqual({ state: 'succeeded', progress: 100, result: { chunks: 9000 } });
        expect(s3).toHaveReceivedCommandWith(GetObjectCommand, {
          Bucket: 'strata-command-output',
          Key: `ssm/${COMMAND_ID}/mi-0123456789abcdef0/awsrunShellScript/${HOST_STEP_NAME}/stdout`,
        });
      });

      it("falls back to SSM's key layout under the configured prefix", async () => {
        invocation({ Status: 'Success', StandardOutputContent: truncated });
        s3.on(GetObjectCommand).resolves({ Body: body(full) });

        await channel().status(host, COMMAND_ID);

        expect(s3).toHaveReceivedCommandWith(GetObjectCommand, {
          Bucket: 'strata-command-output',
          Key: `ssm/${COMMAND_ID}/mi-0123456789abcdef0/awsrunShellScript/${HOST_STEP_NAME}/stdout`,
        });
      });

      it('ignores a reported URL in a bucket other than the configured one', async () => {
        invocation({
          Status: 'Success',
          StandardOutputContent: truncated,
          StandardOutputUrl: 'https://elsewhere.s3.eu-west-1.amazonaws.com/x/stdout',
        });
        s3.on(GetObjectCommand).resolves({ Body: body(full) });

        await channel().status(host, COMMAND_ID);

        expect(s3).toHaveReceivedCommandWith(GetObjectCommand, { Bucket: 'strata-command-output' });
      });

      it('keeps reporting running until the S3 copy exists', async () => {
        invocation({
          Status: 'Success',
          StandardOutputContent: truncated,
          ExecutionEndDateTime: new Date(Date.now() - 5_000).toISOString(),
        });
        s3.on(GetObjectCommand).rejects(new NoSuchKey({ message: 'not yet', $metadata: {} }));

        await expect(channel().status(host, COMMAND_ID)).resolves.toEqual({ state: 'running' });
      });

      it('fails the command when the S3 copy never arrives (the host role cannot write it)', async () => {
        const ended = Date.parse('2030-01-01T00:00:00.000Z');
        invocation({
          Status: 'Success',
          StandardOutputContent: truncated,
          ExecutionEndDateTime: new Date(ended).toISOString(),
        });
        s3.on(GetObjectCommand).rejects(new NoSuchKey({ message: 'missing', $metadata: {} }));

        const status = await channel({ now: () => ended + OUTPUT_UPLOAD_GRACE_MS + 1 }).status(
          host,
          COMMAND_ID,
        );

        expect(status).toEqual({
          state: 'failed',
          error: expect.objectContaining({ code: 'SsmOutputMissing', retryable: false }),
        });
        expect(status.error?.message).toMatch(/s3:PutObject/);
      });

      it('does not read S3 for output that fits inline', async () => {
        invocation({
          Status: 'Success',
          StandardOutputContent: events({ type: 'result', ok: true, result: {} }),
        });

        await channel().status(host, COMMAND_ID);

        expect(s3).not.toHaveReceivedCommand(GetObjectCommand);
      });

      it('reads the host error of a failed command from S3 too', async () => {
        const error = { code: 'ChecksumMismatch', message: 'bad chunk', retryable: true };
        invocation({
          Status: 'Failed',
          StatusDetails: 'Failed',
          ResponseCode: 1,
          StandardOutputContent: truncated,
        });
        s3.on(GetObjectCommand).resolves({
          Body: body(`${truncated}${events({ type: 'result', ok: false, error })}`),
        });

        await expect(channel().status(host, COMMAND_ID)).resolves.toEqual({ state: 'failed', error });
      });
    });
  });
});

describe('parseS3Url', () => {
  it('reads path-style URLs', () => {
    expect(parseS3Url('https://s3.eu-west-1.amazonaws.com/bucket/a/b%20c/stdout')).toEqual({
      Bucket: 'bucket',
      Key: 'a/b c/stdout',
    });
  });

  it('reads virtual-hosted URLs', () => {
    expect(parseS3Url('https://bucket.s3.eu-west-1.amazonaws.com/a/stdout')).toEqual({
      Bucket: 'bucket',
      Key: 'a/stdout',
    });
  });

  it('returns undefined for anything else', () => {
    expect(parseS3Url('not a url')).toBeUndefined();
    expect(parseS3Url('https://example.com/a/b')).toBeUndefined();
  });
});
