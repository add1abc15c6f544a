/**
 * The headless browser of the Bull Board tests: Debian's Chromium, driven by playwright-core
 * (which downloads no browser of its own).
 */
import { accessSync, constants } from 'node:fs';

const CANDIDATES = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];

/**
 * Path of a Chromium or Chrome binary: `CHROMIUM_PATH` if set, else the first of the usual Debian
 * and Ubuntu locations that exists. Throws a message that says what to install when none does.
 */
export function chromiumPath(): string {
  const fromEnv = process.env.CHROMIUM_PATH;
  const candidates = fromEnv ? [fromEnv] : CANDIDATES;
  for (const path of candidates) {
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // try the next one
    }
  }
  throw new Error(
    `The Bull Board tests drive a headless Chromium and found none at ${candidates.join(', ')}: ` +
      'install it (Debian/Ubuntu: `sudo apt-get install chromium`; `bash .ci/run` does) ' +
      'or set CHROMIUM_PATH to a Chromium or Chrome binary.',
  );
}
