/**
 * One hash of everything the cloud assembly is built from: the CDK app and its constructs, the
 * functions, drivers and flow definitions it bundles, and the lockfile and settings that steer the
 * build. The CDK app stamps it into the assembly it writes; the embedded stack reuses an assembly
 * whose stamp matches the sources and synthesizes again otherwise.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const REPO_ROOT = path.join(__dirname, '..');
/** The file the stamp is kept in, inside the assembly directory. */
export const SOURCES_STAMP = 'strata-sources.json';

const INPUTS = [
  'functions',
  'drivers',
  'statemachines',
  'infra/aws',
  'infra/host-runtime-bundle.ts',
  'infra/sources-fingerprint.ts',
  'package-lock.json',
  'cdk.json',
  'tsconfig.json',
];

function walk(file: string, out: string[]): void {
  const stat = statSync(file);
  if (stat.isDirectory()) {
    for (const name of readdirSync(file).sort()) walk(path.join(file, name), out);
  } else if (stat.isFile()) {
    out.push(file);
  }
}

/** sha256 over the inputs' relative paths and contents, in a fixed order. */
export function sourcesFingerprint(root: string = REPO_ROOT): string {
  const files: string[] = [];
  for (const input of INPUTS) {
    const full = path.join(root, input);
    if (existsSync(full)) walk(full, files);
  }
  const hash = createHash('sha256');
  for (const file of files) {
    hash.update(path.relative(root, file)).update('\0').update(readFileSync(file)).update('\0');
  }
  return hash.digest('hex');
}

/** Writes the stamp of the current sources into an assembly directory. */
export function stampAssembly(outdir: string, root: string = REPO_ROOT): void {
  writeFileSync(
    path.join(outdir, SOURCES_STAMP),
    `${JSON.stringify({ fingerprint: sourcesFingerprint(root), stampedAt: new Date().toISOString() })}\n`,
  );
}

/** The fingerprint an assembly was stamped with, if any. */
export function assemblyStamp(outdir: string): string | undefined {
  try {
    const parsed = JSON.parse(readFileSync(path.join(outdir, SOURCES_STAMP), 'utf8')) as {
      fingerprint?: unknown;
    };
    return typeof parsed.fingerprint === 'string' ? parsed.fingerprint : undefined;
  } catch {
    return undefined;
  }
}
