/**
 * The host runtime as hosts run it: drivers/host-main.ts bundled by esbuild into one plain JS file.
 * The CDK stack ships this file to SSM managed instances; the embedded stack runs the same file as
 * its local hosts' child processes (and starts it in well under a second, where tsx takes several).
 */
import path from 'node:path';
import { buildSync } from 'esbuild';

export const HOST_RUNTIME_ENTRY = path.join(__dirname, '..', 'drivers', 'host-main.ts');

/**
 * Writes the bundle to `outfile` and returns its path. `build` is baked in as the runtime's build id
 * (drivers/sdk/host-build.ts), which it reports and checks every request against.
 */
export function bundleHostRuntime(outfile: string, entry = HOST_RUNTIME_ENTRY, build?: string): string {
  buildSync({
    ...(build ? { define: { STRATA_HOST_BUILD: JSON.stringify(build) } } : {}),
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    legalComments: 'none',
    logLevel: 'warning',
  });
  return outfile;
}
