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
import { fig, median, printFigures, startBenchStack, writeRandomFile } from './harness';

export async function benchIngest(sizeMiB = 256, rounds = 3): Promise<Record<string, number>> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'strata-bench-ingest-'));
  const image = path.join(dir, 'image.raw');
  await writeRandomFile(image, sizeMiB * 2 ** 20);
  const server = await startImageServer();
  server.serve('/image.raw', { kind: 'file', path: image });
  const { stack, api, waitJob } = await startBenchStack(dir, { fetchAllowlist: '127.0.0.1' });
  const s3 = new S3Client(localS3ClientConfig(stack.endpoints.s3));
  await s3.send(new CreateBucketCommand({ Bucket: 'baseline' }));

  const strataTimes: number[] = [];
  const baselineTimes: number[] = [];
  try {
    for (let round = 0; round < rounds; round++) {
      // Baseline: download to a file, then upload that file (8 MiB parts, 4 at once, like Strata).
      const t0 = performance.now();
      const copy = path.join(dir, `download-${round}.raw`);
      const res = await fetch(server.url('/image.raw'));
      await pipeline(Readable.fromWeb(res.body as never), createWriteStream(copy));
      await new Upload({
        client: s3,
        params: { Bucket: 'baseline', Key: `round-${round}.raw`, Body: createReadStream(copy) },
        partSize: 8 * 2 ** 20,
        queueSize: 4,
      }).done();
      baselineTimes.push(performance.now() - t0);
      await rm(copy);

      // Strata: the whole register flow.
      const t1 = performance.now();
      const started = await api('POST', '/templates', {
        name: `bench-${round}`,
        url: server.url('/image.raw'),
        format: 'raw',
        zoneId: 'zone-1',
      });
      await waitJob(started.job.id);
      strataTimes.push(performance.now() - t1);
    }
  } finally {
    s3.destroy();
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
  };
  console.log(`ingest ${size} MiB, median of ${rounds} rounds`);
  console.log(
    `  strata register (URL → image store, hashed, inspected): ${figures.strataMs} ms  (${figures.strataMiBps} MiB/s)`,
  );
  console.log(
    `  baseline download-then-upload:                          ${figures.baselineMs} ms  (${figures.baselineMiBps} MiB/s)`,
  );
  console.log(`  ratio strata / baseline: ${figures.ratio}  (time ratio, lower is better; target ≤ 0.7)`);
  printFigures('ingest', { registerOverBaseline: fig(strata / baseline, 2) }, { details: { ...figures } });
  return figures;
}
