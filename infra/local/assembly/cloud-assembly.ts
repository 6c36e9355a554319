/**
 * The cloud assembly the embedded stack runs: what `cdk synth` wrote to cdk.out. It is reused while
 * its sources stamp (infra/sources-fingerprint.ts) matches the working tree and synthesized again
 * otherwise, through the same CDK CLI and app that `cdk deploy` uses.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../../drivers/sdk/types.js';
import { assemblyStamp, REPO_ROOT, sourcesFingerprint } from '../../sources-fingerprint.js';

export const DEFAULT_ASSEMBLY_DIR = path.join(REPO_ROOT, 'cdk.out');
export const DEFAULT_STACK_NAME = 'Strata';

/** A CloudFormation resource as the template holds it. */
export interface CfnResource {
  Type: string;
  Properties?: Record<string, unknown>;
  Metadata?: Record<string, unknown>;
  DependsOn?: string | string[];
  Condition?: string;
}

export interface CfnTemplate {
  Resources: Record<string, CfnResource>;
  Outputs?: Record<string, { Value: unknown; Description?: string }>;
  Parameters?: Record<string, { Type: string; Default?: unknown }>;
  Conditions?: Record<string, unknown>;
}

/** A file asset of the stack, and where `cdk deploy` would publish it. */
export interface FileAsset {
  hash: string;
  /** Absolute path in the assembly (a file, or a directory for zip assets). */
  source: string;
  packaging: 'file' | 'zip';
  /** With `${AWS::AccountId}`-style placeholders, as the asset manifest has them. */
  bucketName: string;
  objectKey: string;
}

export interface CloudAssembly {
  dir: string;
  stackName: string;
  template: CfnTemplate;
  /** The region the stack was synthesized for, when it is concrete. */
  region?: string;
  assets: FileAsset[];
}

/** Loads a synthesized stack from an assembly directory. */
export function loadAssembly(
  dir: string = DEFAULT_ASSEMBLY_DIR,
  stackName = DEFAULT_STACK_NAME,
): CloudAssembly {
  const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as {
    artifacts?: Record<string, { type: string; environment?: string; properties?: Record<string, unknown> }>;
  };
  const artifact = manifest.artifacts?.[stackName];
  if (artifact?.type !== 'aws:cloudformation:stack') {
    throw new Error(`the assembly in ${dir} has no stack ${stackName}`);
  }
  const templateFile = String(artifact.properties?.templateFile ?? `${stackName}.template.json`);
  const template = JSON.parse(readFileSync(path.join(dir, templateFile), 'utf8')) as CfnTemplate;
  const region = /^aws:\/\/[^/]+\/([a-z0-9-]+)$/.exec(artifact.environment ?? '')?.[1];
  const assets: FileAsset[] = [];
  const assetManifest = path.join(dir, `${stackName}.assets.json`);
  if (existsSync(assetManifest)) {
    const parsed = JSON.parse(readFileSync(assetManifest, 'utf8')) as {
      files?: Record<
        string,
        {
          source: { path: string; packaging?: string };
          destinations: Record<string, { bucketName: string; objectKey: string }>;
        }
      >;
    };
    for (const [hash, file] of Object.entries(parsed.files ?? {})) {
      const destination = Object.values(file.destinations)[0];
      if (!destination) continue;
      assets.push({
        hash,
        source: path.join(dir, file.source.path),
        packaging: file.source.packaging === 'zip' ? 'zip' : 'file',
        bucketName: destination.bucketName,
        objectKey: destination.objectKey,
      });
    }
  }
  return { dir, stackName, template, ...(region && region !== 'unknown-region' ? { region } : {}), assets };
}

export interface EnsureAssemblyOptions {
  dir?: string;
  logger?: Logger;
  /** Synthesize even when the stamp matches. */
  force?: boolean;
}

/**
 * Makes `dir` hold an assembly of the current sources: reused when its stamp matches, otherwise
 * synthesized with `cdk synth` (CloudFormation validation off: CI runs a validated synth of its
 * own). Concurrent callers wait for one synthesis.
 */
export async function ensureAssembly(
  options: EnsureAssemblyOptions = {},
): Promise<{ dir: string; synthesized: boolean; fingerprint: string }> {
  const dir = options.dir ?? DEFAULT_ASSEMBLY_DIR;
  const fingerprint = sourcesFingerprint();
  if (!options.force && assemblyStamp(dir) === fingerprint) return { dir, synthesized: false, fingerprint };
  const release = await lock(`${dir}.lock`);
  try {
    // Another process may have synthesized while this one waited for the lock.
    if (!options.force && assemblyStamp(dir) === fingerprint) return { dir, synthesized: false, fingerprint };
    options.logger?.info('synthesizing the cloud assembly', { dir });
    await synthesize(dir);
    const stamped = assemblyStamp(dir);
    if (stamped !== fingerprint) {
      throw new Error(
        stamped
          ? 'the sources changed while the assembly was being synthesized; start again'
          : `cdk synth wrote no sources stamp to ${dir}`,
      );
    }
    return { dir, synthesized: true, fingerprint };
  } finally {
    release();
  }
}

function synthesize(dir: string): Promise<void> {
  const cdk = path.join(REPO_ROOT, 'node_modules', '.bin', 'cdk');
  return new Promise((resolve, reject) => {
    const child = spawn(cdk, ['synth', '--quiet', '--output', dir], {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        CDK_VALIDATION: 'false',
        AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    const keep = (d: Buffer) => {
      output = (output + d.toString()).slice(-8000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.once('error', reject);
    child.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`cdk synth exited with ${code}:\n${output}`)),
    );
  });
}

/** An exclusive lock file; a lock older than ten minutes is a crashed holder's and is taken over. */
async function lock(file: string): Promise<() => void> {
  const deadline = Date.now() + 10 * 60_000;
  for (;;) {
    try {
      closeSync(openSync(file, 'wx'));
      return () => rmSync(file, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      try {
        if (Date.now() - statSync(file).mtimeMs > 10 * 60_000) rmSync(file, { force: true });
      } catch {
        // gone meanwhile
      }
      if (Date.now() > deadline) throw new Error(`gave up waiting for ${file}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}
