/**
 * `qemu-img compare` of two images as an exit code: 0 identical content, 1 different, 2 an error.
 * The tests keep reference copies and compare what Strata produced against them byte for byte.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const exec = promisify(execFile);

export async function qemuCompare(a: string, b: string): Promise<number> {
  try {
    await exec('qemu-img', ['compare', a, b]);
    return 0;
  } catch (e) {
    return Number((e as { code?: number }).code ?? 1);
  }
}
