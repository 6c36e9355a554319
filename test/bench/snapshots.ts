/**
 * Snapshot backup benchmark on the embedded stack (real qcow2 volumes on the nfs pool, qemu-nbd
 * on a local host, the S3 emulator in its own process):
 *
 *   npm run bench -- snapshots [dataMiB=256] [volumeMiB=1024] [changedMiB=16] [rounds=2]
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
 * Phase times come from polling every 100 ms: the take ends when the snapshot is first seen
 * BackingUp; scan and upload end when the job's progressDetail says `scanned` / `uploaded`; the
 * restore's host work ends at `restored`. Everything a round creates is deleted at its end.
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
import { median, startBenchStack, writeRandomFile } from './harness';

const exec = promisify(execFile);
const MiB = 2 ** 20;
const CHUNK = 4 * MiB;
const IN_FLIGHT = 4;
const POLL_MS = 100;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Round {
  baselineUpMs: number;
  fullMs: number;
  fullTakeMs: number;
  fullScanMs: number;
  fullUploadMs: number;
  fullCommitMs: number;
  incMs: number;
  incTakeMs: number;
  incScanMs: number;
  incUploadMs: number;
  incCommitMs: number;
  incUploaded: number;
  incRead: number;
  incChunksUploaded: number;
  fullUploaded: number;
  fullRead: number;
  fullChunksUploaded: number;
  baselineDownMs: number;
  restoreMs: number;
  restoreHostMs: number;
}

export async function benchSnapshots(
  dataMiB = 256,
  volumeMiB = 1024,
  changedMiB = 16,
  rounds = 2,
): Promise<Record<string, number>> {
  if (dataMiB % 4 || changedMiB % 4 || dataMiB > volumeMiB || changedMiB > dataMiB || changedMiB <= 0) {
    throw new Error('dataMiB and changedMiB must be multiples of 4, changed ≤ data ≤ volume');
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
  /** Snapshot+backup, timed from the POST; marks when the take, the scan and the upload ended. */
  const timedBackup = async (volumeId: string, name: string) => {
    const t0 = performance.now();
    const taken = await api('POST', `/volumes/${volumeId}/snapshots`, { name, backup: true });
    if (!taken.job) throw new Error(`snapshot refused: ${JSON.stringify(taken)}`);
    const marks: Record<string, number> = {};
    for (;;) {
      const job = await api('GET', `/jobs/${taken.job.id}`);
      const now = performance.now() - t0;
      const phase = job.progressDetail?.phase as string | undefined;
      if (phase === 'scanned' || phase === 'uploaded' || job.state === 'succeeded') marks.take ??= now;
      if (phase === 'scanned') marks.scanned ??= now;
      if (phase === 'uploaded' || job.state === 'succeeded') {
        marks.scanned ??= now;
        marks.uploaded ??= now;
      }
      if (job.state === 'succeeded') {
        return { ms: now, marks, result: job.result, snapshotId: taken.snapshot.id as string };
      }
      if (job.state === 'failed') throw new Error(`backup ${name} failed: ${job.error.message}`);
      if (marks.take === undefined) {
        const snap = await api('GET', `/snapshots/${taken.snapshot.id}`);
        if (snap.status !== 'Creating') marks.take = performance.now() - t0;
      }
      await sleep(POLL_MS);
    }
  };

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
      t0 = performance.now();
      const restored = await api('POST', '/volumes', {
        name: `restore-${round}`,
        zoneId: 'zone-1',
        storeId: primary.id,
        fromSnapshotId: inc.snapshotId,
        restoreFrom: 'backup',
      });
      if (!restored.job) throw new Error(`restore refused: ${JSON.stringify(restored)}`);
      let restoreHostMs: number | undefined;
      for (;;) {
        const job = await api('GET', `/jobs/${restored.job.id}`);
        const now = performance.now() - t0;
        if (job.progressDetail?.phase === 'restored' || job.state === 'succeeded') restoreHostMs ??= now;
        if (job.state === 'succeeded') break;
        if (job.state === 'failed') throw new Error(`restore failed: ${job.error.message}`);
        await sleep(POLL_MS);
      }
      const restoreMs = performance.now() - t0;
      const restoredVolume = await api('GET', `/volumes/${restored.volume.id}`);
      try {
        await exec('qemu-img', ['compare', file, path.join(mountPath, restoredVolume.path)]);
      } catch (e) {
        throw new Error(`restored volume differs from the source: ${(e as Error).message}`);
      }

      figuresByRound.push({
        baselineUpMs,
        fullMs: full.ms,
        fullTakeMs: full.marks.take!,
        fullScanMs: full.marks.scanned! - full.marks.take!,
        fullUploadMs: full.marks.uploaded! - full.marks.scanned!,
        fullCommitMs: full.ms - full.marks.uploaded!,
        fullUploaded: full.result.bytesUploaded,
        fullRead: full.result.bytesRead,
        fullChunksUploaded: full.result.chunksUploaded,
        incMs: inc.ms,
        incTakeMs: inc.marks.take!,
        incScanMs: inc.marks.scanned! - inc.marks.take!,
        incUploadMs: inc.marks.uploaded! - inc.marks.scanned!,
        incCommitMs: inc.ms - inc.marks.uploaded!,
        incUploaded: inc.result.bytesUploaded,
        incRead: inc.result.bytesRead,
        incChunksUploaded: inc.result.chunksUploaded,
        baselineDownMs,
        restoreMs,
        restoreHostMs: restoreHostMs!,
      });
      const r = figuresByRound[figuresByRound.length - 1]!;
      console.log(
        `  round ${round + 1}: full ${Math.round(r.fullMs)} ms (baseline ${Math.round(r.baselineUpMs)}), ` +
          `incremental ${Math.round(r.incMs)} ms uploading ${r.incUploaded / MiB} MiB, ` +
          `restore ${Math.round(r.restoreMs)} ms (baseline ${Math.round(r.baselineDownMs)})`,
      );

      // Clean up: the restored volume, both snapshots (primary layers and backups), the volume,
      // the baseline's objects.
      const dropVolume = async (id: string) => {
        const del = await api('DELETE', `/volumes/${id}`);
        await waitJob(del.job.id);
      };
      await dropVolume(restored.volume.id);
      for (const id of [inc.snapshotId, full.snapshotId]) {
        const res = await fetch(`${stack.url}/snapshots/${id}`, {
          method: 'DELETE',
          headers: { authorization: `Bearer ${stack.apiTokens.admin}` },
        });
        // A snapshot delete is a job now (202); an older answer was 204.
        if (res.status === 202) await waitJob(((await res.json()) as { job: { id: string } }).job.id);
        else if (res.status !== 204)
          throw new Error(`DELETE /snapshots/${id}: ${res.status} ${await res.text()}`);
      }
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
  } finally {
    s3.destroy();
    await stack.stop();
    await rm(dir, { recursive: true, force: true });
  }

  const m = (k: keyof Round) => median(figuresByRound.map((r) => r[k]));
  const mibps = (ms: number) => Math.round((dataMiB / ms) * 1000);
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
    fullTakeMs: Math.round(m('fullTakeMs')),
    fullScanMs: Math.round(m('fullScanMs')),
    fullUploadMs: Math.round(m('fullUploadMs')),
    fullCommitMs: Math.round(m('fullCommitMs')),
    fullUploadedMiB: m('fullUploaded') / MiB,
    fullReadMiB: m('fullRead') / MiB,
    incMs: Math.round(m('incMs')),
    incTakeMs: Math.round(m('incTakeMs')),
    incScanMs: Math.round(m('incScanMs')),
    incUploadMs: Math.round(m('incUploadMs')),
    incCommitMs: Math.round(m('incCommitMs')),
    incUploadedMiB: m('incUploaded') / MiB,
    incReadMiB: m('incRead') / MiB,
    incBytesRatio: Number((m('incUploaded') / changedBytes).toFixed(2)),
    incTimeRatio: Number(median(figuresByRound.map((r) => r.incMs / r.fullMs)).toFixed(2)),
    baselineDownMs: Math.round(m('baselineDownMs')),
    baselineDownMiBps: mibps(m('baselineDownMs')),
    restoreMs: Math.round(m('restoreMs')),
    restoreMiBps: mibps(m('restoreMs')),
    restoreHostMs: Math.round(m('restoreHostMs')),
    restoreRatio: Number((m('restoreMs') / m('baselineDownMs')).toFixed(2)),
  };
  const f = figures;
  console.log(
    `snapshots: ${dataMiB} MiB of random data in a ${volumeMiB} MiB volume, ${changedMiB} MiB changed; median of ${rounds} rounds`,
  );
  console.log('  | step | Strata | baseline | ratio |');
  console.log('  |---|---|---|---|');
  console.log(
    `  | full backup | ${f.fullMs} ms (${f.fullMiBps} MiB/s) | ${f.baselineUpMs} ms (${f.baselineUpMiBps} MiB/s) | ${f.fullRatio} |`,
  );
  console.log(
    `  | incremental backup | ${f.incMs} ms, ${f.incUploadedMiB} MiB uploaded for ${changedMiB} MiB changed | — | bytes ${f.incBytesRatio} (target ≤ 1.25), time / full ${f.incTimeRatio} (target ≤ 0.2) |`,
  );
  console.log(
    `  | restore | ${f.restoreMs} ms (${f.restoreMiBps} MiB/s) | ${f.baselineDownMs} ms (${f.baselineDownMiBps} MiB/s) | ${f.restoreRatio} |`,
  );
  console.log(
    `  full:        take ${f.fullTakeMs} ms, scan ${f.fullScanMs} ms, upload ${f.fullUploadMs} ms, commit ${f.fullCommitMs} ms; read ${f.fullReadMiB} MiB, uploaded ${f.fullUploadedMiB} MiB`,
  );
  console.log(
    `  incremental: take ${f.incTakeMs} ms, scan ${f.incScanMs} ms, upload ${f.incUploadMs} ms, commit ${f.incCommitMs} ms; read ${f.incReadMiB} MiB, uploaded ${f.incUploadedMiB} MiB`,
  );
  console.log(`  restore:     host done at ${f.restoreHostMs} ms of ${f.restoreMs} ms`);
  return figures;
}
