import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const root = join(__dirname, '..', '..', '..');

describe('bin/strata.js', () => {
  it('starts the TypeScript CLI through tsx and prints help', async () => {
    const { stdout } = await run(process.execPath, [join(root, 'bin', 'strata.js'), '--help'], { cwd: root });

    expect(stdout).toContain('Usage: strata <command>');
  }, 30_000);

  it('passes the exit code through', async () => {
    const failure = await run(process.execPath, [join(root, 'bin', 'strata.js'), 'nonsense'], {
      cwd: root,
    }).catch((error: { code: number; stderr: string }) => error);

    expect(failure).toMatchObject({ code: 2 });
    expect((failure as { stderr: string }).stderr).toContain("unknown command 'nonsense'");
  }, 30_000);
});
