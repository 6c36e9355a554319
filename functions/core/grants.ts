/**
 * How long a grant (a presigned S3 URL) lives. Every presign of the control plane takes its
 * lifetime from here, so that no grant outlives the step that uses it by much: grants travel in SSM
 * command parameters (kept in the command history for 30 days), in plan files on the image store
 * and in API answers, and a URL is a bearer credential until it expires.
 *
 * A host step's grant lives {@link GRANT_BASE_SECONDS} plus the time to move the step's bytes at
 * {@link GRANT_FLOOR_BYTES_PER_SECOND}, capped at {@link GRANT_MAX_SECONDS} (the host's own deadline
 * for copies: a host gives up on the step then anyway). S3 checks a presigned URL when a request
 * starts, so a transfer that began before the expiry runs to its end.
 *
 * When a link is slower than the floor, a request the host starts after the expiry gets 403. The
 * host reports that as a non-retryable failure (`DownloadFailed` for template installs and the
 * staged import, `TransferFailed` for backup chunk PUTs, restore chunk GETs and staged part PUTs):
 * the step fails, the flow's compensation runs and the job ends Failed. Nothing retries it with the
 * same grants; running the operation again (a new job) presigns new ones. A slow site raises the
 * floor's effect by configuring a lower rate (`STRATA_GRANT_FLOOR_MIB_S`).
 *
 * A resumable host step (host-invoker.ts) sends its command once and polls it over several runs;
 * each run presigns again, but the host keeps the args of the first send. That is why the lifetime
 * is sized for the whole transfer from the first send, not for one Lambda run. A retried attempt
 * (after a retryable host failure) is sent with the grants of the run that sends it.
 *
 * Operator uploads (`strata templates upload`) are different: the CLI renews its part URLs through
 * `POST /templates/{id}/uploads/{uploadId}/parts`, so they live {@link UPLOAD_GRANT_SECONDS} whatever
 * the image's size.
 */

import { EnvName } from '../env-names.js';

/** Every host-step grant gets this much on top of its transfer time (queueing, start-up, checks). */
export const GRANT_BASE_SECONDS = 15 * 60;
/** The slowest link a host step's grant is sized for, unless configured (bytes per second). */
export const GRANT_FLOOR_BYTES_PER_SECOND = 8 * 1024 * 1024;
/** No host-step grant lives longer: the host's deadline for a copy (drivers/nfs copyDeadlineSeconds). */
export const GRANT_MAX_SECONDS = 6 * 60 * 60;
/** Part URLs handed to an operator's client; it renews them through the parts route. */
export const UPLOAD_GRANT_SECONDS = 60 * 60;

/**
 * How old a lazily restored volume's chunk list may get before its URLs are renewed:
 * `STRATA_LAZY_RENEW_SECONDS` when set (> 0), else half of the list's lifetime. The hydration
 * step checks on every run (every ≤ 30 s of a long wait), so a list is renewed well before it
 * runs out however long the hydration takes.
 */
export function lazyRenewAfterSeconds(
  lifetimeSeconds: number,
  env: Record<string, string | undefined> = process.env,
): number {
  const configured = Number(env[EnvName.LazyRenewSeconds]);
  return Number.isFinite(configured) && configured > 0 ? configured : Math.floor(lifetimeSeconds / 2);
}

/** The floor rate: `STRATA_GRANT_FLOOR_MIB_S` (MiB/s, > 0) when set, else the default. */
export function grantFloorBytesPerSecond(env: Record<string, string | undefined> = process.env): number {
  const configured = Number(env.STRATA_GRANT_FLOOR_MIB_S);
  return Number.isFinite(configured) && configured > 0
    ? configured * 1024 * 1024
    : GRANT_FLOOR_BYTES_PER_SECOND;
}

/**
 * Lifetime in seconds of a grant used by one host step that moves `bytes` (0 or omitted for a
 * small document the host reads at the start of its step: a manifest, a plan, a chunk list).
 */
export function hostGrantSeconds(bytes = 0, floorBytesPerSecond = grantFloorBytesPerSecond()): number {
  const size = Number.isFinite(bytes) && bytes > 0 ? bytes : 0;
  const transfer = Math.ceil(size / floorBytesPerSecond);
  return Math.min(GRANT_MAX_SECONDS, GRANT_BASE_SECONDS + transfer);
}
