/**
 * Restore of a backup into a new volume, on the embedded stack (real qcow2, qemu-nbd on a local
 * host, the S3 emulator behind the local authorizing proxy):
 *
 *   npm run bench -- restore [dataMiB=256] [volumeMiB=1024] [rounds=3]
 *
 * A volume of `volumeMiB` gets `dataMiB` of random bytes (qemu-io) and one full backup. Then,
 * alternating each round, with a cold page cache:
 *
 * - Strata: `POST /volumes {fromSnapshotId, restoreFrom: 'backup'}` until the job succeeds (pin,
 *   presigned GETs, the paged list, one `restoreChunks` host command: 8 GETs in flight, sha256 of
 *   each, positional writes into the clusters of a new qcow2 written directly, fsync, rename; then the pins released). The host
 *   command's own time is read from the job's progress (`restored`).
 * - baseline: a plain download of the same chunk objects, presigned the same way and through the same
 *   S3 endpoint, each written at its offset into a raw file on the pool's disk, in a process of its
 *   own: 8 GETs in flight (as the restore), and 4 (as `npm run bench -- snapshots` measures); and
 *   the same 8-in-flight download with each chunk's sha256 computed before it is written (the least
 *   a restore that verifies every byte must do: the verified ceiling).
 *
 * The restore's transfer is also timed on its own, from the job's first `restore` progress (the host
 * command has started moving chunks) to its `done` progress (the image is whole); the rest of the
 * job is fixed cost (the control plane before and after, the host command's start and end).
 *
 * Checked afterwards with `qemu-img compare` (untimed); the restored volume is deleted each round.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { chunkExtent, chunkObjectKey } from '../../drivers/sdk/backup-manifest';
import { localS3ClientConfig } from '../../infra/local/s3-emulator';
import { median, runInstallChild, startBenchStack, writeRandomFile } from './harness';

const exec = promisify(execFile);
const MiB = 2 ** 20;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function coldCache(): Promise<void> {
  try {
    await exec('sync');
    await writeFile('/proc/sys/vm/drop_caches', '3');
  } catch {
    // not root: warm cache for every side alike
  }
}

export async function benchRestore(
  dataMiB = 256,
  volumeMiB = 1024,
  rounds = 3,
): Promise<Record<string, number>> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'strata-bench-restore-'));
  const { stack, api, waitJob } = await startBenchStack(dir, { pollMs: 50 });
  const direct = new S3Client(localS3ClientConfig(stack.endpoints.s3));
  const signer = new S3Client({
    ...localS3ClientConfig(stack.endpoints.s3Proxy),
    credentials: stack.credentialsFor('StoreTasksRole'),
  });
  try {
    const primary = (await api('GET', '/stores?role=primary')).items.find(
      (s: { name: string }) => s.name === 'nfs-primary-1',
    );
    const mountPath: string = primary.details.mountPath;
    const created = await api('POST', '/volumes', {
      name: 'restore-source',
      zoneId: 'zone-1',
      sizeBytes: volumeMiB * MiB,
      storeId: primary.id,
    });
    await waitJob(created.job.id);
    const volume = await api('GET', `/volumes/${created.volume.id}`);
    const file = path.join(mountPath, volume.path);
    const data = path.join(dir, 'data.raw');
    await writeRandomFile(data, dataMiB * MiB);
    await exec('qemu-io', ['-c', `write -s ${data} 0 ${dataMiB * MiB}`, file]);
    await rm(data);
    const taken = await api('POST', `/volumes/${volume.id}/snapshots`, { name: 'backup', backup: true });
    await waitJob(taken.job.id);

    // The backup's chunks, presigned as the store-tasks function presigns a restore's.
    const manifestKey = `images/backups/manifests/${volume.id}/${taken.snapshot.id}.json`;
    const manifest = JSON.parse(
      await (
        await direct.send(new GetObjectCommand({ Bucket: stack.imageBucket, Key: manifestKey }))
      ).Body!.transformToString(),
    ) as { virtualSizeBytes: number; chunkSizeBytes: number; chunks: Array<string | null> };
    const list: Array<{ url: string; offset: number; length: number }> = [];
    for (const [index, sha] of manifest.chunks.entries()) {
      if (sha === null) continue;
      const { start, length } = chunkExtent(index, manifest.virtualSizeBytes, manifest.chunkSizeBytes);
      const key = `images/${chunkObjectKey('backups/chunks', sha)}`;
      const url = await getSignedUrl(signer, new GetObjectCommand({ Bucket: stack.imageBucket, Key: key }), {
        expiresIn: 3600,
      });
      list.push({ url, offset: start, length });
    }
    const listFile = path.join(dir, 'chunks.json');
    await writeFile(listFile, JSON.stringify(list));
    const baseline = async (inFlight: number, verify = false) => {
      await coldCache();
      const { ms } = await runInstallChild([
        'chunks',
        listFile,
        mountPath,
        String(inFlight),
        ...(verify ? ['sha256'] : []),
      ]);
      await rm(path.join(mountPath, 'chunks-baseline.raw'), { force: true });
      return ms;
    };
    const strata = async (round: number) => {
      await coldCache();
      const t0 = performance.now();
      const restored = await api('POST', '/volumes', {
        name: `restored-${round}`,
        zoneId: 'zone-1',
        storeId: primary.id,
        fromSnapshotId: taken.snapshot.id,
        restoreFrom: 'backup',
      });
      if (!restored.job) throw new Error(`restore refused: ${JSON.stringify(restored)}`);
      let hostMs: number | undefined;
      let transferMs = Number.NaN;
      for (;;) {
        const job = await api('GET', `/jobs/${restored.job.id}`);
        const now = performance.now() - t0;
        if (job.progressDetail?.phase === 'restored') transferMs = job.progressDetail.transferMs;
        if (job.progressDetail?.phase === 'restored' || job.state === 'succeeded') hostMs ??= now;
        if (job.state === 'succeeded') break;
        if (job.state === 'failed') throw new Error(`restore failed: ${job.error.message}`);
        await sleep(50);
      }
      const ms = performance.now() - t0;
      const restoredVolume = await api('GET', `/volumes/${restored.volume.id}`);
      await exec('qemu-img', ['compare', file, path.join(mountPath, restoredVolume.path)]);
      const del = await api('DELETE', `/volumes/${restored.volume.id}`);
      await waitJob(del.job.id);
      return { ms, hostMs: hostMs!, transferMs };
    };
    const times = {
      strata: [] as number[],
      host: [] as number[],
      transfer: [] as number[],
      eight: [] as number[],
      verified: [] as number[],
      four: [] as number[],
    };
    for (let r = 0; r < rounds; r++) {
      const s = await strata(r);
      times.strata.push(Math.round(s.ms));
      times.host.push(Math.round(s.hostMs));
      times.transfer.push(Math.round(s.transferMs));
      times.eight.push(await baseline(8));
      times.verified.push(await baseline(8, true));
      times.four.push(await baseline(4));
    }
    const mib = list.reduce((n, c) => n + c.length, 0) / MiB;
    const rate = (ms: number) => Math.round(mib / (ms / 1000));
    const figures = {
      restoredMiB: mib,
      restoreMs: median(times.strata),
      restoreMiBps: rate(median(times.strata)),
      restoreHostDoneMs: median(times.host),
      baseline8Ms: median(times.eight),
      baseline8MiBps: rate(median(times.eight)),
      baseline4Ms: median(times.four),
      baseline4MiBps: rate(median(times.four)),
      ratio8: Number((median(times.eight) / median(times.strata)).toFixed(2)),
      ratio4: Number((median(times.four) / median(times.strata)).toFixed(2)),
      transferMs: median(times.transfer),
      verifiedMs: median(times.verified),
      transferVsPlainDownload: Number((median(times.eight) / median(times.transfer)).toFixed(2)),
      transferVsVerifiedDownload: Number((median(times.verified) / median(times.transfer)).toFixed(2)),
      fixedMs: Math.round(median(times.strata) - median(times.transfer)),
    };
    const f = figures;
    console.log(
      `restore: ${f.restoredMiB} MiB of chunks into a ${volumeMiB} MiB volume, median of ${rounds} rounds`,
    );
    console.log(
      `  Strata restore job: ${times.strata.join(', ')} ms → ${f.restoreMs} ms (${f.restoreMiBps} MiB/s); host done at ${times.host.join(', ')} ms`,
    );
    console.log(
      `  plain download of the same chunks, 8 in flight: ${times.eight.join(', ')} ms → ${f.baseline8Ms} ms (${f.baseline8MiBps} MiB/s)`,
    );
    console.log(
      `  plain download of the same chunks, 4 in flight: ${times.four.join(', ')} ms → ${f.baseline4Ms} ms (${f.baseline4MiBps} MiB/s)`,
    );
    console.log(
      `  plain download, 8 in flight, each chunk's sha256 computed: ${times.verified.join(', ')} ms → ${f.verifiedMs} ms`,
    );
    console.log(
      `  restore throughput / plain download throughput: ${f.ratio8} (8 in flight), ${f.ratio4} (4 in flight)  (target ≥ 0.9)`,
    );
    console.log(
      `  the restore's transfer alone: ${times.transfer.join(', ')} ms → ${f.transferMs} ms: ${f.transferVsPlainDownload} of the plain download's throughput, ${f.transferVsVerifiedDownload} of the verified one's; fixed costs ${f.fixedMs} ms`,
    );
    return figures;
  } finally {
    direct.destroy();
    signer.destroy();
    await stack.stop();
    await rm(dir, { recursive: true, force: true });
  }
}
