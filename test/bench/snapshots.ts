/**
 * Snapshot backup benchmark on the embedded stack (real qcow2 volumes on the nfs pool, qemu-nbd
 * on a local host, the S3 emulator in its own process):
 *
 *   npm run bench -- snapshots [dataMiB=256] [volumeMiB=1024] [changedMiB=16] [rounds=2]
 *                              [largeVolumeMiB=4096] [largeDataMiB=2048]
 *
 * Each round makes a fresh volume of `volumeMiB`, writes `dataMiB` of new random bytes at offset 0
 * with `qemu-io` (fresh per round, so no chunk of an earlier round can be reused), then:
 *
 * 1. Full backup: `POST /volumes/{id}/snapshots {backup: true}` until the job succeeds (the take,
 *    then scan, upload, commit). Baseline: the same bytes read from a raw file in 4 MiB pieces and
 *    PUT to presigned URLs of the same emulator with `fetch`, 4 in flight — the host's own transfer
 *    path (chunk size, concurrency, HTTP client) without the snapshot, NBD, hashing or control plane.
 * 2. Incremental: `changedMiB` of new random bytes in aligned 4 MiB pieces spread over the data,
 *    then snapshot+backup again. Figures: bytesUploaded / bytes changed (target ≤ 1.25) and
 *    incremental job time / full job time (target ≤ 0.2).
 * 3. Restore: `POST /volumes {fromSnapshotId, restoreFrom: 'backup'}` of the incremental snapshot
 *    until the job succeeds, checked against the volume with `qemu-img compare` (untimed). Baseline:
 *    GET the baseline's pieces (4 in flight, presigned, `fetch`) and write each at its offset in a
 *    local file.
 *
 * Then once, the large case (skipped when largeVolumeMiB is 0): a sparse volume of
 * `largeVolumeMiB` holding `largeDataMiB` of data spread over it in 4 MiB pieces written by qemu-io
 * (a fill pattern and a stamp make every piece distinct, so no piece dedups against another), a full
 * and an incremental backup (`changedMiB` of random bytes), a snapshot taken alone and then backed
 * up alone (`POST /snapshots/{id}/backup`), a restore checked with `qemu-img compare`, and a lazy
 * restore (`POST /volumes {…, lazy: true}`) timed until `qemu-io -r -c 'read 0 64k'` first
 * succeeds on the new volume's file; a 400 (no such feature) makes that figure null, with the reason.
 *
 * Beside each round and the large case, the same pieces are moved alone (./transfers.ts): plain
 * PUTs and GETs straight to s3rver, and through the stack's S3 endpoint the path a backup's chunks
 * take (POSTs under one policy, then HEAD and server-side copy) and a restore's GETs. The ratios of
 * those to the plain ones are the emulator's own ceiling for Strata's figures
 * (`proxyUploadCeiling`, `proxyDownloadCeiling`, and `…Large`); the large case also prints
 * `fullVsPlainUploadLarge` and `restoreVsPlainDownloadLarge` against its plain transfers.
 *
 * Every job time runs from the API call to the job's success. Host commands are counted per flow
 * (the local SSM's `onSend` hook) and their processes' memory sampled every 50 ms (harness
 * `startFlowProbe`). Phase times are extra and only where the job reports them (polling every
 * 100 ms): the take ends when the snapshot leaves `Creating`; scan and upload end when the job's
 * progressDetail says `scanned` / `uploaded`; the restore's host work ends at `restored`; a phase
 * the job does not report prints as n/a. Everything a round creates is deleted at its end.
 *
 * The last line printed is `{"bench":"snapshots","figures":{"fullVsPlainUpload":…,
 * "incrementalOverFull":…,"incrementalBytesOverChanged":…,"restoreVsPlainDownload":…,
 * "hostCommandsPerBackup":…,"hostPeakRssMiB":…,"lazyRestoreFirstReadMs":…,…}}`.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { forEachLimit } from '../../functions/core/pool';
import { localS3ClientConfig } from '../../infra/local/s3-emulator';
import {
  type FlowProbe,
  fig,
  median,
  printFigures,
  startBenchStack,
  startFlowProbe,
  writeRandomFile,
} from './harness';
import { measureTransfers, type Transfers } from './transfers';

const exec = promisify(execFile);
const MiB = 2 ** 20;
const CHUNK = 4 * MiB;
const IN_FLIGHT = 4;
const POLL_MS = 100;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Probed = { ms: number; probe: FlowProbe };

/** What the large case measured. */
interface Large {
  full: Probed & { result: { bytesUploaded: number } };
  inc: Probed & { result: { bytesUploaded: number } };
  take: FlowProbe;
  backupAlone: FlowProbe;
  backupAloneMs: number;
  restore: Probed;
  transfers: Transfers;
  lazy: { firstReadMs?: number; jobMs?: number; probe?: FlowProbe; notMeasured?: string };
}

interface Round {
  baselineUpMs: number;
  fullMs: number;
  fullTakeMs: number;
  fullScanMs: number;
  fullUploadMs: number;
  fullCommitMs: number;
  fullCommands: number;
  incMs: number;
  incTakeMs: number;
  incScanMs: number;
  incUploadMs: number;
  incCommitMs: number;
  incCommands: number;
  restoreCommands: number;
  runtimePeakRssMiB: number;
  incUploaded: number;
  incRead: number;
  incChunksUploaded: number;
  fullUploaded: number;
  fullRead: number;
  fullChunksUploaded: number;
  baselineDownMs: number;
  restoreMs: number;
  restoreHostMs: number;
  proxyPostMs: number;
  proxyPromoteMs: number;
  proxyGetMs: number;
}

export async function benchSnapshots(
  dataMiB = 256,
  volumeMiB = 1024,
  changedMiB = 16,
  rounds = 2,
  largeVolumeMiB = 4096,
  largeDataMiB = 2048,
): Promise<Record<string, number | null>> {
  if (dataMiB % 4 || changedMiB % 4 || dataMiB > volumeMiB || changedMiB > dataMiB || changedMiB <= 0) {
    throw new Error('dataMiB and changedMiB must be multiples of 4, changed ≤ data ≤ volume');
  }
  if (
    largeVolumeMiB > 0 &&
    (largeVolumeMiB % 4 ||
      largeDataMiB % 4 ||
      largeDataMiB <= 0 ||
      largeDataMiB > largeVolumeMiB ||
      changedMiB > largeDataMiB)
  ) {
    throw new Error(
      'largeVolumeMiB and largeDataMiB must be multiples of 4, changed ≤ large data ≤ large volume',
    );
  }
  const dataBytes = dataMiB * MiB;
  const changedBytes = changedMiB * MiB;
  const pieces = dataBytes / CHUNK;
  const changedPieces = changedBytes / CHUNK;
  const indexes = Array.from({ length: pieces }, (_, i) => i);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'strata-bench-snapshots-'));
  const { stack, api, waitJob } = await startBenchStack(dir, { pollMs: POLL_MS });
  const s3 = new S3Client(localS3ClientConfig(stack.endpoints.s3));
  await s3.send(new CreateBucketCommand({ Bucket: 'baseline' }));
  /**
   * Snapshot+backup, timed from the POST to the job's success; marks when the take ended (the
   * snapshot left `Creating`) and, where the job reports them, when the scan and the upload ended.
   */
  const timedBackup = async (volumeId: string, name: string) => {
    const probe = startFlowProbe(stack);
    const t0 = performance.now();
    const taken = await api('POST', `/volumes/${volumeId}/snapshots`, { name, backup: true });
    if (!taken.job) throw new Error(`snapshot refused: ${JSON.stringify(taken)}`);
    const marks: { take?: number; scanned?: number; uploaded?: number } = {};
    for (;;) {
      const job = await api('GET', `/jobs/${taken.job.id}`);
      const now = performance.now() - t0;
      const phase = job.progressDetail?.phase as string | undefined;
      if (phase === 'scanned') marks.scanned ??= now;
      if (phase === 'uploaded') marks.uploaded ??= now;
      if (job.state === 'succeeded') {
        marks.take ??= now;
        return {
          ms: now,
          marks,
          result: job.result,
          snapshotId: taken.snapshot.id as string,
          probe: probe.stop(),
        };
      }
      if (job.state === 'failed') {
        probe.stop();
        throw new Error(`backup ${name} failed: ${job.error.message}`);
      }
      if (marks.take === undefined) {
        const snap = await api('GET', `/snapshots/${taken.snapshot.id}`);
        if (snap.status !== 'Creating') marks.take = performance.now() - t0;
      }
      await sleep(POLL_MS);
    }
  };
  /** Phase lengths from a backup's marks; a phase the job did not report is undefined. */
  const phases = (b: { ms: number; marks: { take?: number; scanned?: number; uploaded?: number } }) => {
    const { take, scanned, uploaded } = b.marks;
    return {
      take,
      scan: scanned !== undefined && take !== undefined ? scanned - take : undefined,
      upload: uploaded !== undefined && scanned !== undefined ? uploaded - scanned : undefined,
      commit: uploaded !== undefined ? b.ms - uploaded : undefined,
    };
  };
  /** A volume restored from a snapshot's backup, timed from the POST to the job's success. */
  const timedRestore = async (snapshotId: string, storeId: string, name: string) => {
    const probe = startFlowProbe(stack);
    const t0 = performance.now();
    const restored = await api('POST', '/volumes', {
      name,
      zoneId: 'zone-1',
      storeId,
      fromSnapshotId: snapshotId,
      restoreFrom: 'backup',
    });
    if (!restored.job) {
      probe.stop();
      throw new Error(`restore refused: ${JSON.stringify(restored)}`);
    }
    let hostMs: number | undefined;
    for (;;) {
      const job = await api('GET', `/jobs/${restored.job.id}`);
      const now = performance.now() - t0;
      if (job.progressDetail?.phase === 'restored') hostMs ??= now;
      if (job.state === 'succeeded')
        return { ms: now, hostMs, volumeId: restored.volume.id as string, probe: probe.stop() };
      if (job.state === 'failed') {
        probe.stop();
        throw new Error(`restore failed: ${job.error.message}`);
      }
      await sleep(POLL_MS);
    }
  };
  const dropVolume = async (id: string) => {
    const del = await api('DELETE', `/volumes/${id}`);
    await waitJob(del.job.id);
  };
  /** Deletes a snapshot from primary and image store, waiting for its job when it answers 202. */
  const dropSnapshot = async (id: string) => {
    const res = await fetch(`${stack.url}/snapshots/${id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${stack.apiTokens.admin}` },
    });
    if (res.status === 202) await waitJob(((await res.json()) as { job: { id: string } }).job.id);
    else if (res.status !== 204)
      throw new Error(`DELETE /snapshots/${id}: ${res.status} ${await res.text()}`);
    else await res.body?.cancel();
  };

  /**
   * The large case: a sparse volume with data spread over it, backed up full, incrementally, and
   * alone after a take alone, restored, and restored lazily.
   */
  const largeCase = async (c: {
    primary: { id: string };
    mountPath: string;
    volumeMiB: number;
    dataMiB: number;
    changedMiB: number;
  }): Promise<Large> => {
    const volumeChunks = (c.volumeMiB * MiB) / CHUNK;
    const dataChunks = (c.dataMiB * MiB) / CHUNK;
    const stride = Math.floor(volumeChunks / dataChunks);
    const offsets = Array.from({ length: dataChunks }, (_, i) => i * stride * CHUNK);
    const created = await api('POST', '/volumes', {
      name: 'bench-large',
      zoneId: 'zone-1',
      sizeBytes: c.volumeMiB * MiB,
      storeId: c.primary.id,
    });
    await waitJob(created.job.id);
    const volume = await api('GET', `/volumes/${created.volume.id}`);
    const file = path.join(c.mountPath, volume.path);
    // Piece i: filled with byte (i mod 255) + 1, its first 512 bytes with ⌊i / 255⌋ + 1, so no two
    // pieces are alike (no chunk dedups) without writing random gigabytes.
    const writes = offsets.flatMap((offset, i) => [
      '-c',
      `write -q -P ${(i % 255) + 1} ${offset} ${CHUNK}`,
      '-c',
      `write -q -P ${Math.floor(i / 255) + 1} ${offset} 512`,
    ]);
    await exec('qemu-io', [...writes, file], { maxBuffer: 64 * MiB });
    const full = await timedBackup(volume.id, 'large-full');

    const changed = (c.changedMiB * MiB) / CHUNK;
    const changeFiles: string[] = [];
    const changes: string[] = [];
    for (let i = 0; i < changed; i++) {
      const f = path.join(dir, `large-change-${i}.raw`);
      await writeRandomFile(f, CHUNK);
      changeFiles.push(f);
      changes.push('-c', `write -q -s ${f} ${offsets[Math.floor((i * dataChunks) / changed)]} ${CHUNK}`);
    }
    await exec('qemu-io', [...changes, file]);
    const inc = await timedBackup(volume.id, 'large-incremental');
    for (const f of changeFiles) await rm(f);

    // A snapshot taken alone, then backed up alone.
    let probe = startFlowProbe(stack);
    const taken = await api('POST', `/volumes/${volume.id}/snapshots`, { name: 'large-take' });
    if (!taken.job) throw new Error(`snapshot refused: ${JSON.stringify(taken)}`);
    await waitJob(taken.job.id);
    const take = probe.stop();
    probe = startFlowProbe(stack);
    let t0 = performance.now();
    const backup = await api('POST', `/snapshots/${taken.snapshot.id}/backup`);
    if (!backup.job) throw new Error(`backup refused: ${JSON.stringify(backup)}`);
    await waitJob(backup.job.id);
    const backupAloneMs = performance.now() - t0;
    const backupAlone = probe.stop();

    const restore = await timedRestore(inc.snapshotId, c.primary.id, 'large-restore');
    const restoredVolume = await api('GET', `/volumes/${restore.volumeId}`);
    try {
      await exec('qemu-img', ['compare', file, path.join(c.mountPath, restoredVolume.path)]);
    } catch (e) {
      throw new Error(`restored large volume differs from the source: ${(e as Error).message}`);
    }
    await dropVolume(restore.volumeId);

    // The same amount of data moved alone: plain and through the proxy (the pieces as written above).
    const transfers = await measureTransfers(
      stack,
      dataChunks,
      async (i) => {
        const b = Buffer.alloc(CHUNK, (i % 255) + 1);
        b.fill(Math.floor(i / 255) + 1, 0, 512);
        return b;
      },
      'large',
    );

    // Lazy restore: from the POST until a first 64 KiB read through the new volume's file works.
    let lazy: Large['lazy'];
    t0 = performance.now();
    const res = await fetch(`${stack.url}/volumes`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${stack.apiTokens.admin}` },
      body: JSON.stringify({
        name: 'large-lazy',
        zoneId: 'zone-1',
        storeId: c.primary.id,
        fromSnapshotId: inc.snapshotId,
        restoreFrom: 'backup',
        lazy: true,
      }),
    });
    const answer = (await res.json()) as any;
    if (res.status === 400) {
      lazy = {
        notMeasured: `POST /volumes answered 400 for lazy: true (${answer?.error?.message ?? answer?.message ?? JSON.stringify(answer)})`,
      };
    } else if (res.status !== 202 || !answer.job) {
      lazy = {
        notMeasured: `POST /volumes with lazy: true answered ${res.status} ${JSON.stringify(answer)}`,
      };
    } else {
      const lazyProbe = startFlowProbe(stack);
      let firstReadMs: number | undefined;
      for (;;) {
        const v = await api('GET', `/volumes/${answer.volume.id}`);
        if (v.path) {
          const read = await exec('qemu-io', ['-r', '-c', 'read 0 64k', path.join(c.mountPath, v.path)]).then(
            (r) => r.stdout,
            () => '',
          );
          if (/read 65536\/65536 bytes/.test(read)) {
            firstReadMs = performance.now() - t0;
            break;
          }
        }
        const job = await api('GET', `/jobs/${answer.job.id}`);
        if (job.state === 'failed') {
          lazyProbe.stop();
          throw new Error(`lazy restore failed before a first read: ${job.error.message}`);
        }
        if (job.state === 'succeeded' && !v.path)
          throw new Error('lazy restore succeeded without a volume path');
        await sleep(20);
      }
      await waitJob(answer.job.id);
      const jobMs = performance.now() - t0;
      lazy = { firstReadMs, jobMs, probe: lazyProbe.stop() };
      await dropVolume(answer.volume.id);
    }

    for (const id of [taken.snapshot.id as string, inc.snapshotId, full.snapshotId]) await dropSnapshot(id);
    await dropVolume(volume.id);
    return { full, inc, take, backupAlone, backupAloneMs, restore, transfers, lazy };
  };
  let large: Large | undefined;

  const figuresByRound: Round[] = [];
  try {
    const primary = (await api('GET', '/stores?role=primary')).items.find(
      (s: { name: string }) => s.name === 'nfs-primary-1',
    );
    const mountPath: string = primary.details.mountPath;
    for (let round = 0; round < rounds; round++) {
      // Fresh random bytes every round: nothing an earlier round stored can be reused.
      const data = path.join(dir, 'data.raw');
      await writeRandomFile(data, dataBytes);
      const changes: Array<{ file: string; offset: number }> = [];
      for (let i = 0; i < changedPieces; i++) {
        const file = path.join(dir, `change-${i}.raw`);
        await writeRandomFile(file, CHUNK);
        // Spread evenly over the data, 4 MiB aligned.
        changes.push({ file, offset: Math.floor((i * pieces) / changedPieces) * CHUNK });
      }

      const created = await api('POST', '/volumes', {
        name: `bench-${round}`,
        zoneId: 'zone-1',
        sizeBytes: volumeMiB * MiB,
        storeId: primary.id,
      });
      await waitJob(created.job.id);
      const volume = await api('GET', `/volumes/${created.volume.id}`);
      const file = path.join(mountPath, volume.path);
      await exec('qemu-io', ['-c', `write -s ${data} 0 ${dataBytes}`, file]);

      // Baseline upload: the same bytes, 4 MiB PUTs to presigned URLs, 4 in flight.
      const prefix = `round-${round}/`;
      let t0 = performance.now();
      const src = await open(data, 'r');
      await forEachLimit(indexes, IN_FLIGHT, async (i) => {
        const body = Buffer.allocUnsafe(CHUNK);
        await src.read(body, 0, CHUNK, i * CHUNK);
        const url = await getSignedUrl(
          s3,
          new PutObjectCommand({ Bucket: 'baseline', Key: `${prefix}${i}` }),
          {
            expiresIn: 3600,
          },
        );
        const res = await fetch(url, {
          method: 'PUT',
          body,
          headers: { 'content-length': String(CHUNK), 'content-type': 'application/octet-stream' },
        });
        await res.body?.cancel();
        if (res.status !== 200) throw new Error(`baseline PUT ${i}: ${res.status}`);
      });
      await src.close();
      const baselineUpMs = performance.now() - t0;

      // Strata full backup.
      const full = await timedBackup(volume.id, `full-${round}`);

      // Incremental: new random bytes in aligned pieces, then snapshot+backup again.
      await exec('qemu-io', [
        ...changes.flatMap((c) => ['-c', `write -s ${c.file} ${c.offset} ${CHUNK}`]),
        file,
      ]);
      const inc = await timedBackup(volume.id, `incremental-${round}`);

      // Baseline download: GET the same pieces, 4 in flight, each written at its offset.
      const copy = path.join(dir, 'download.raw');
      t0 = performance.now();
      const dst = await open(copy, 'w');
      await forEachLimit(indexes, IN_FLIGHT, async (i) => {
        const url = await getSignedUrl(
          s3,
          new GetObjectCommand({ Bucket: 'baseline', Key: `${prefix}${i}` }),
          {
            expiresIn: 3600,
          },
        );
        const res = await fetch(url);
        if (res.status !== 200) throw new Error(`baseline GET ${i}: ${res.status}`);
        const body = Buffer.from(await res.arrayBuffer());
        await dst.write(body, 0, body.byteLength, i * CHUNK);
      });
      await dst.close();
      const baselineDownMs = performance.now() - t0;
      await rm(copy);

      // Strata restore of the incremental backup into a new volume.
      const restore = await timedRestore(inc.snapshotId, primary.id, `restore-${round}`);
      const restoredVolume = await api('GET', `/volumes/${restore.volumeId}`);
      try {
        await exec('qemu-img', ['compare', file, path.join(mountPath, restoredVolume.path)]);
      } catch (e) {
        throw new Error(`restored volume differs from the source: ${(e as Error).message}`);
      }

      // The same pieces moved alone through the proxy (the path a backup's and a restore's take).
      const source = await open(data, 'r');
      const transfers = await measureTransfers(
        stack,
        pieces,
        async (i) => {
          const b = Buffer.allocUnsafe(CHUNK);
          await source.read(b, 0, CHUNK, i * CHUNK);
          return b;
        },
        `round-${round}`,
      ).finally(() => source.close());

      const fp = phases(full);
      const ip = phases(inc);
      figuresByRound.push({
        baselineUpMs,
        fullMs: full.ms,
        fullTakeMs: fp.take ?? Number.NaN,
        fullScanMs: fp.scan ?? Number.NaN,
        fullUploadMs: fp.upload ?? Number.NaN,
        fullCommitMs: fp.commit ?? Number.NaN,
        fullCommands: full.probe.commands.length,
        fullUploaded: full.result.bytesUploaded,
        fullRead: full.result.bytesRead,
        fullChunksUploaded: full.result.chunksUploaded,
        incMs: inc.ms,
        incTakeMs: ip.take ?? Number.NaN,
        incScanMs: ip.scan ?? Number.NaN,
        incUploadMs: ip.upload ?? Number.NaN,
        incCommitMs: ip.commit ?? Number.NaN,
        incCommands: inc.probe.commands.length,
        incUploaded: inc.result.bytesUploaded,
        incRead: inc.result.bytesRead,
        incChunksUploaded: inc.result.chunksUploaded,
        baselineDownMs,
        restoreMs: restore.ms,
        restoreHostMs: restore.hostMs ?? Number.NaN,
        restoreCommands: restore.probe.commands.length,
        proxyPostMs: transfers.proxyPostMs,
        proxyPromoteMs: transfers.proxyPromoteMs,
        proxyGetMs: transfers.proxyGetMs,
        runtimePeakRssMiB: Math.max(
          full.probe.runtimePeakRssMiB,
          inc.probe.runtimePeakRssMiB,
          restore.probe.runtimePeakRssMiB,
        ),
      });
      const r = figuresByRound[figuresByRound.length - 1]!;
      console.log(
        `  round ${round + 1}: full ${Math.round(r.fullMs)} ms (baseline ${Math.round(r.baselineUpMs)}), ` +
          `incremental ${Math.round(r.incMs)} ms uploading ${r.incUploaded / MiB} MiB, ` +
          `restore ${Math.round(r.restoreMs)} ms (baseline ${Math.round(r.baselineDownMs)}); host commands: ` +
          `full [${full.probe.commands.join(', ')}], incremental [${inc.probe.commands.join(', ')}], ` +
          `restore [${restore.probe.commands.join(', ')}]`,
      );

      // Clean up: the restored volume, both snapshots (primary layers and backups), the volume,
      // the baseline's objects.
      await dropVolume(restore.volumeId);
      for (const id of [inc.snapshotId, full.snapshotId]) await dropSnapshot(id);
      await dropVolume(volume.id);
      await forEachLimit(indexes, 8, async (i) => {
        await s3.send(new DeleteObjectCommand({ Bucket: 'baseline', Key: `${prefix}${i}` }));
      });
      const left = await s3.send(
        new ListObjectsV2Command({ Bucket: stack.imageBucket, Prefix: 'images/backups/' }),
      );
      if ((left.KeyCount ?? 0) > 0) {
        console.log(`  note: ${left.KeyCount} backup objects left after the round's deletes`);
      }
      await rm(data);
      for (const c of changes) await rm(c.file);
    }
    if (largeVolumeMiB > 0) {
      large = await largeCase({
        primary,
        mountPath,
        volumeMiB: largeVolumeMiB,
        dataMiB: largeDataMiB,
        changedMiB,
      });
    }
  } finally {
    s3.destroy();
    await stack.stop();
    await rm(dir, { recursive: true, force: true });
  }

  const m = (k: keyof Round) => median(figuresByRound.map((r) => r[k]));
  const mibps = (ms: number) => Math.round((dataMiB / ms) * 1000);
  const ms = (x: number) => (Number.isFinite(x) ? `${Math.round(x)} ms` : 'n/a');
  const figures = {
    dataMiB,
    volumeMiB,
    changedMiB,
    rounds,
    baselineUpMs: Math.round(m('baselineUpMs')),
    baselineUpMiBps: mibps(m('baselineUpMs')),
    fullMs: Math.round(m('fullMs')),
    fullMiBps: mibps(m('fullMs')),
    fullRatio: Number((m('fullMs') / m('baselineUpMs')).toFixed(2)),
    fullTakeMs: fig(m('fullTakeMs')),
    fullScanMs: fig(m('fullScanMs')),
    fullUploadMs: fig(m('fullUploadMs')),
    fullCommitMs: fig(m('fullCommitMs')),
    fullUploadedMiB: m('fullUploaded') / MiB,
    fullReadMiB: m('fullRead') / MiB,
    incMs: Math.round(m('incMs')),
    incTakeMs: fig(m('incTakeMs')),
    incScanMs: fig(m('incScanMs')),
    incUploadMs: fig(m('incUploadMs')),
    incCommitMs: fig(m('incCommitMs')),
    incUploadedMiB: m('incUploaded') / MiB,
    incReadMiB: m('incRead') / MiB,
    incBytesRatio: Number((m('incUploaded') / changedBytes).toFixed(2)),
    incTimeRatio: Number(median(figuresByRound.map((r) => r.incMs / r.fullMs)).toFixed(2)),
    baselineDownMs: Math.round(m('baselineDownMs')),
    baselineDownMiBps: mibps(m('baselineDownMs')),
    restoreMs: Math.round(m('restoreMs')),
    restoreMiBps: mibps(m('restoreMs')),
    restoreHostMs: fig(m('restoreHostMs')),
    restoreRatio: Number((m('restoreMs') / m('baselineDownMs')).toFixed(2)),
    proxyPostMs: Math.round(m('proxyPostMs')),
    proxyPromoteMs: Math.round(m('proxyPromoteMs')),
    proxyGetMs: Math.round(m('proxyGetMs')),
  };
  const f = figures;
  console.log(
    `snapshots: ${dataMiB} MiB of random data in a ${volumeMiB} MiB volume, ${changedMiB} MiB changed; median of ${rounds} rounds`,
  );
  console.log('  | step | Strata | baseline | ratio |');
  console.log('  |---|---|---|---|');
  console.log(
    `  | full backup | ${f.fullMs} ms (${f.fullMiBps} MiB/s) | ${f.baselineUpMs} ms (${f.baselineUpMiBps} MiB/s) | time ${f.fullRatio}, throughput ${fig(1 / f.fullRatio, 2)} (target ≥ 0.8) |`,
  );
  console.log(
    `  | incremental backup | ${f.incMs} ms, ${f.incUploadedMiB} MiB uploaded for ${changedMiB} MiB changed | — | bytes ${f.incBytesRatio} (target ≤ 1.25), time / full ${f.incTimeRatio} (target ≤ 0.2) |`,
  );
  console.log(
    `  | restore | ${f.restoreMs} ms (${f.restoreMiBps} MiB/s) | ${f.baselineDownMs} ms (${f.baselineDownMiBps} MiB/s) | time ${f.restoreRatio}, throughput ${fig(1 / f.restoreRatio, 2)} (target ≥ 0.9) |`,
  );
  console.log(
    `  full:        take ${ms(m('fullTakeMs'))}, scan ${ms(m('fullScanMs'))}, upload ${ms(m('fullUploadMs'))}, commit ${ms(m('fullCommitMs'))}; read ${f.fullReadMiB} MiB, uploaded ${f.fullUploadedMiB} MiB`,
  );
  console.log(
    `  incremental: take ${ms(m('incTakeMs'))}, scan ${ms(m('incScanMs'))}, upload ${ms(m('incUploadMs'))}, commit ${ms(m('incCommitMs'))}; read ${f.incReadMiB} MiB, uploaded ${f.incUploadedMiB} MiB`,
  );
  console.log(`  restore:     host done at ${ms(m('restoreHostMs'))} of ${f.restoreMs} ms`);
  console.log(
    `  alone, through the S3 proxy: POST ${f.proxyPostMs} ms + promote (HEAD, copy) ${f.proxyPromoteMs} ms ` +
      `(upload ceiling ${fig(f.baselineUpMs / (f.proxyPostMs + f.proxyPromoteMs), 2)} of plain); GET ${f.proxyGetMs} ms ` +
      `(download ceiling ${fig(f.baselineDownMs / f.proxyGetMs, 2)} of plain)`,
  );
  const smallPeak = Math.max(...figuresByRound.map((r) => r.runtimePeakRssMiB));
  console.log(
    `  host commands: take+backup ${m('fullCommands')}, incremental take+backup ${m('incCommands')}, restore ${m('restoreCommands')}; ` +
      `host runtime peak RSS ${smallPeak} MiB`,
  );

  const notMeasured: Record<string, string> = {};
  const largeFigures: Record<string, number | null> = {};
  if (large) {
    const L = large;
    const peak = (p: FlowProbe[]) => Math.max(...p.map((x) => x.runtimePeakRssMiB));
    const groupPeak = (p: FlowProbe[]) => Math.max(...p.map((x) => x.groupPeakRssMiB));
    const probes = [L.full.probe, L.inc.probe, L.backupAlone, L.restore.probe];
    Object.assign(largeFigures, {
      incrementalOverFullLarge: fig(L.inc.ms / L.full.ms, 3),
      hostCommandsTake: L.take.commands.length,
      hostCommandsBackupAlone: L.backupAlone.commands.length,
      hostCommandsRestore: L.restore.probe.commands.length,
      hostPeakRssMiB: peak(probes),
      hostGroupPeakRssMiB: groupPeak(probes),
      lazyRestoreFirstReadMs: fig(L.lazy.firstReadMs),
      fullVsPlainUploadLarge: fig(L.transfers.plainUpMs / L.full.ms, 2),
      restoreVsPlainDownloadLarge: fig(L.transfers.plainDownMs / L.restore.ms, 2),
      proxyUploadCeilingLarge: fig(
        L.transfers.plainUpMs / (L.transfers.proxyPostMs + L.transfers.proxyPromoteMs),
        2,
      ),
      proxyDownloadCeilingLarge: fig(L.transfers.plainDownMs / L.transfers.proxyGetMs, 2),
    });
    const T = L.transfers;
    console.log(
      `  alone, ${largeDataMiB} MiB: plain PUT ${Math.round(T.plainUpMs)} ms, plain GET ${Math.round(T.plainDownMs)} ms; ` +
        `through the proxy: POST ${Math.round(T.proxyPostMs)} ms + promote ${Math.round(T.proxyPromoteMs)} ms, GET ${Math.round(T.proxyGetMs)} ms`,
    );
    if (L.lazy.notMeasured) notMeasured.lazyRestoreFirstReadMs = L.lazy.notMeasured;
    console.log(
      `snapshots, large case: ${largeDataMiB} MiB of data spread over a sparse ${largeVolumeMiB} MiB volume, ${changedMiB} MiB changed`,
    );
    console.log(
      `  full ${Math.round(L.full.ms)} ms (${Math.round((largeDataMiB / L.full.ms) * 1000)} MiB/s), incremental ${Math.round(L.inc.ms)} ms ` +
        `(${L.inc.result.bytesUploaded / MiB} MiB uploaded; time / full ${largeFigures.incrementalOverFullLarge}, target ≤ 0.05), ` +
        `backup alone ${Math.round(L.backupAloneMs)} ms, restore ${Math.round(L.restore.ms)} ms`,
    );
    const list = (p: FlowProbe) => `${p.commands.length} [${p.commands.join(', ')}]`;
    console.log(
      `  host commands: take+backup ${list(L.full.probe)}, take alone ${list(L.take)}, backup alone ${list(L.backupAlone)}, restore ${list(L.restore.probe)}`,
    );
    for (const [name, p] of [
      ['full backup', L.full.probe],
      ['incremental', L.inc.probe],
      ['backup alone', L.backupAlone],
      ['restore', L.restore.probe],
    ] as const) {
      console.log(
        `  host memory, ${name}: runtime peak ${p.runtimePeakRssMiB} MiB (VmHWM), with its qemu children ${p.groupPeakRssMiB} MiB (sum of VmRSS); ${p.runtimeProcesses} runtime processes, ${p.samples} samples`,
      );
    }
    console.log(
      L.lazy.notMeasured
        ? `  lazy restore: not measured: ${L.lazy.notMeasured}`
        : `  lazy restore: first 64 KiB read at ${Math.round(L.lazy.firstReadMs!)} ms, job done at ${Math.round(L.lazy.jobMs!)} ms`,
    );
  } else {
    for (const k of [
      'incrementalOverFullLarge',
      'hostPeakRssMiB',
      'lazyRestoreFirstReadMs',
      'fullVsPlainUploadLarge',
      'restoreVsPlainDownloadLarge',
    ]) {
      largeFigures[k] = null;
      notMeasured[k] = 'the large case was skipped (largeVolumeMiB 0)';
    }
  }
  const result: Record<string, number | null> = {
    fullVsPlainUpload: fig(m('baselineUpMs') / m('fullMs'), 2),
    /** The proxy's own ceiling for a backup's path (POST, then HEAD and copy), against plain PUTs. */
    proxyUploadCeiling: fig(m('baselineUpMs') / (m('proxyPostMs') + m('proxyPromoteMs')), 2),
    /** The proxy's own ceiling for a restore's GETs, against plain GETs written to a file. */
    proxyDownloadCeiling: fig(m('baselineDownMs') / m('proxyGetMs'), 2),
    incrementalOverFull: f.incTimeRatio,
    incrementalBytesOverChanged: f.incBytesRatio,
    restoreVsPlainDownload: fig(m('baselineDownMs') / m('restoreMs'), 2),
    hostCommandsPerBackup: m('fullCommands'),
    hostCommandsIncrementalBackup: m('incCommands'),
    ...largeFigures,
    hostPeakRssMiBSmallVolume: smallPeak,
  };
  printFigures('snapshots', result, {
    notMeasured,
    details: { ...figures, largeVolumeMiB, largeDataMiB },
  });
  return result;
}
