/**
 * Ingest benchmark: registering an image by URL through Strata versus a plain baseline that
 * downloads the file to disk and then uploads it with the SDK, side by side on the same emulators.
 *
 *   npm run bench -- ingest [sizeMiB=256] [rounds=3]
 *
 * Strata's time runs from POST /templates to the job's success (the whole workflow: SSRF-checked
 * fetch, hashing, inspection, multipart upload, state changes). The baseline does only the two
 * transfers, one after the other. The ratio is Strata / baseline (a time ratio: lower is better).
 * The last line printed is `{"bench":"ingest","figures":{"registerOverBaseline":…}}`.
 *
 * The baseline's two transfers are timed apart, and each round also uploads the same file once more
 * the way Strata's function must (through the local authorizing S3 proxy, signed as the image-tasks
 * role, same parts). A register that streamed perfectly, downloading, hashing and uploading at once,
 * still could not end before the slower of its download and that upload: `registerCeiling` is
 * max(download, proxied upload) / baseline. And since both transfers keep this machine's cores busy,
 * running them at once cannot take less than their CPU time over the cores: `registerCpuFloor` is
 * (download CPU time + proxied upload CPU time) / cores / baseline (CPU time = wall time × cores
 * busy, from /proc/stat; the hashing and inspection a register adds are not even counted).
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { localS3ClientConfig } from '../../infra/local/s3-emulator';
import { startImageServer } from '../support/image-server';
import { cpuMeter, fig, median, printFigures, startBenchStack, writeRandomFile } from './harness';

export async function benchIngest(sizeMiB = 256, rounds = 3): Promise<Record<string, number>> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'strata-bench-ingest-'));
  const image = path.join(dir, 'image.raw');
  await writeRandomFile(image, sizeMiB * 2 ** 20);
  const server = await startImageServer();
  server.serve('/image.raw', { kind: 'file', path: image });
  const { stack, api, waitJob } = await startBenchStack(dir, { fetchAllowlist: '127.0.0.1' });
  const s3 = new S3Client(localS3ClientConfig(stack.endpoints.s3));
  await s3.send(new CreateBucketCommand({ Bucket: 'baseline' }));

  const proxied = new S3Client({
    ...localS3ClientConfig(stack.endpoints.s3Proxy),
    credentials: stack.credentialsFor('ImageTasksRole'),
  });
  const strataTimes: number[] = [];
  const baselineTimes: number[] = [];
  const downloadTimes: number[] = [];
  const uploadTimes: number[] = [];
  const proxiedTimes: number[] = [];
  const ceilings: number[] = [];
  const cpu = { download: [] as number[], proxied: [] as number[], strata: [] as number[] };
  try {
    for (let round = 0; round < rounds; round++) {
      // Baseline: download to a file, then upload that file (8 MiB parts, 4 at once, like Strata).
      const t0 = performance.now();
      let meter = cpuMeter();
      const copy = path.join(dir, `download-${round}.raw`);
      const res = await fetch(server.url('/image.raw'));
      await pipeline(Readable.fromWeb(res.body as never), createWriteStream(copy));
      const downloaded = performance.now();
      cpu.download.push(meter.stop());
      await new Upload({
        client: s3,
        params: { Bucket: 'baseline', Key: `round-${round}.raw`, Body: createReadStream(copy) },
        partSize: 8 * 2 ** 20,
        queueSize: 4,
      }).done();
      const end = performance.now();
      baselineTimes.push(end - t0);
      downloadTimes.push(downloaded - t0);
      uploadTimes.push(end - downloaded);
      const t2 = performance.now();
      meter = cpuMeter();
      await new Upload({
        client: proxied,
        params: {
          Bucket: stack.imageBucket,
          Key: `images/templates/bench-ceiling-${round}/bench-ceiling-${round}.raw`,
          Body: createReadStream(copy),
        },
        partSize: 8 * 2 ** 20,
        queueSize: 4,
      }).done();
      proxiedTimes.push(performance.now() - t2);
      cpu.proxied.push(meter.stop());
      ceilings.push(Math.max(downloaded - t0, performance.now() - t2) / (end - t0));
      await rm(copy);

      // Strata: the whole register flow.
      const t1 = performance.now();
      meter = cpuMeter();
      const started = await api('POST', '/templates', {
        name: `bench-${round}`,
        url: server.url('/image.raw'),
        format: 'raw',
        zoneId: 'zone-1',
      });
      await waitJob(started.job.id);
      strataTimes.push(performance.now() - t1);
      cpu.strata.push(meter.stop());
    }
  } finally {
    s3.destroy();
    proxied.destroy();
    await stack.stop();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
  const size = sizeMiB;
  const strata = median(strataTimes);
  const baseline = median(baselineTimes);
  const figures = {
    sizeMiB: size,
    rounds,
    strataMs: Math.round(strata),
    baselineMs: Math.round(baseline),
    strataMiBps: Math.round((size / strata) * 1000),
    baselineMiBps: Math.round((size / baseline) * 1000),
    ratio: Number((strata / baseline).toFixed(2)),
    downloadMs: Math.round(median(downloadTimes)),
    uploadMs: Math.round(median(uploadTimes)),
    proxiedUploadMs: Math.round(median(proxiedTimes)),
    ceiling: Number(median(ceilings).toFixed(2)),
    coresBusyDownload: median(cpu.download),
    coresBusyProxiedUpload: median(cpu.proxied),
    coresBusyStrata: median(cpu.strata),
    cores: os.cpus().length,
    // Both transfers at once still need the CPU time each takes alone: on a machine whose cores
    // they already keep busy, that bounds any register from below (hashing not even counted).
    cpuFloor: 0,
  };
  figures.cpuFloor = Number(
    (
      (figures.downloadMs * figures.coresBusyDownload +
        figures.proxiedUploadMs * figures.coresBusyProxiedUpload) /
      figures.cores /
      baseline
    ).toFixed(2),
  );
  console.log(`ingest ${size} MiB, median of ${rounds} rounds`);
  console.log(
    `  strata register (URL → image store, hashed, inspected): ${figures.strataMs} ms  (${figures.strataMiBps} MiB/s)`,
  );
  console.log(
    `  baseline download-then-upload:                          ${figures.baselineMs} ms  (${figures.baselineMiBps} MiB/s)`,
  );
  console.log(
    `    of which download ${figures.downloadMs} ms, upload ${figures.uploadMs} ms; the same upload through the S3 proxy: ${figures.proxiedUploadMs} ms`,
  );
  console.log(`  ratio strata / baseline: ${figures.ratio}  (time ratio, lower is better; target ≤ 0.7)`);
  console.log(
    `  CPU busy (cores of ${figures.cores}): download ${figures.coresBusyDownload}, proxied upload ${figures.coresBusyProxiedUpload}, Strata's register ${figures.coresBusyStrata}`,
  );
  console.log(
    `  ceiling: max(download, proxied upload) / baseline = ${figures.ceiling}; CPU floor: (download + proxied upload CPU time) / ${figures.cores} cores / baseline = ${figures.cpuFloor} (no register can be faster here)`,
  );
  printFigures(
    'ingest',
    {
      registerOverBaseline: fig(strata / baseline, 2),
      registerCeiling: fig(median(ceilings), 2),
      registerCpuFloor: figures.cpuFloor,
    },
    { details: { ...figures } },
  );
  return figures;
}
