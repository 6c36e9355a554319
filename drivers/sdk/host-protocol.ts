/**
 * The wire format between Strata's control plane and the host runtime. The same JSON travels over
 * SSM Run Command (base64 in the document's one parameter) and over the local child-process channel.
 * It is data, never a shell string: the runtime validates it before anything runs.
 */
import { z } from 'zod';

const safeId = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._:-]*$/, 'letters, digits, dot, underscore, colon and dash only');

/** A request to run one host operation. */
export const HostRequestSchema = z.object({
  version: z.literal(1),
  /** Unique per dispatch; a repeated requestId is the same request. */
  requestId: safeId,
  /** The job on whose behalf this runs; host operations use it as a fencing token. */
  jobId: safeId,
  hostId: safeId,
  provider: z.string().regex(/^[a-z][a-z0-9-]{0,62}$/),
  operation: z.string().regex(/^[a-zA-Z][a-zA-Z0-9.-]{0,62}$/),
  args: z.record(z.string(), z.unknown()),
  /** The runtime aborts the operation after this many seconds. */
  deadlineSeconds: z.number().int().positive().max(86_400),
  /**
   * The host runtime build the control plane was deployed with. A runtime of another build refuses
   * the request with `HostBuildMismatch` (except the probe, which reports the build). Absent: no check.
   */
  build: z
    .string()
    .regex(/^[A-Za-z0-9._-]{1,80}$/)
    .optional(),
});
export type HostRequest = z.infer<typeof HostRequestSchema>;

/** Failure reported by a host operation. `retryable` tells workflows whether to try again. */
export const HostErrorSchema = z.object({
  code: z.string(),
  message: z.string(),
  retryable: z.boolean(),
});
export type HostError = z.infer<typeof HostErrorSchema>;

/**
 * One line the runtime prints on stdout (newline-delimited JSON). The last line is a `result`.
 * A plain union: zod 4 refuses a discriminated union with two `result` members ("Duplicate
 * discriminator value"), which made every parse throw.
 */
export const HostEventSchema = z.union([
  z.object({
    type: z.literal('progress'),
    percent: z.number().min(0).max(100),
    detail: z.record(z.string(), z.unknown()).optional(),
  }),
  z.object({ type: z.literal('result'), ok: z.literal(true), result: z.unknown() }),
  z.object({ type: z.literal('result'), ok: z.literal(false), error: HostErrorSchema }),
]);
export type HostEvent = z.infer<typeof HostEventSchema>;

/** Encodes a request for transport: base64 of its JSON (only `[A-Za-z0-9+/=]`, safe as an SSM parameter). */
export function encodeHostRequest(request: HostRequest): string {
  return Buffer.from(JSON.stringify(HostRequestSchema.parse(request)), 'utf8').toString('base64');
}

/** Decodes and validates a transported request; throws a ZodError on anything malformed. */
export function decodeHostRequest(encoded: string): HostRequest {
  if (!/^[A-Za-z0-9+/=]+$/.test(encoded)) throw new Error('host request is not base64');
  return HostRequestSchema.parse(JSON.parse(Buffer.from(encoded, 'base64').toString('utf8')));
}

/**
 * Reads the runtime's stdout and returns the final result event, or undefined when there is none
 * (the process died before finishing). Lines that are not events are ignored.
 */
export function parseHostOutput(stdout: string): {
  progress?: { percent: number; detail?: Record<string, unknown> };
  result?: Extract<HostEvent, { type: 'result' }>;
} {
  let progress: { percent: number; detail?: Record<string, unknown> } | undefined;
  let result: Extract<HostEvent, { type: 'result' }> | undefined;
  for (const line of stdout.split('\n')) {
    const trimmed = line.trim();
    if (!trimmed.startsWith('{')) continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(trimmed);
    } catch {
      continue;
    }
    const event = HostEventSchema.safeParse(parsed);
    if (!event.success) continue;
    if (event.data.type === 'progress') progress = { percent: event.data.percent, detail: event.data.detail };
    else result = event.data;
  }
  return { progress, result };
}
