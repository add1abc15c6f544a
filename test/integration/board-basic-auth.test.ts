/**
 * Issue 5: `pgq-bridge board`, seen through a real headless Chromium (test/support/browser.ts finds one; driven
 * by playwright-core): every consumer queue, a failed job's error, consumers registered later,
 * 401 without credentials, no retry button in read-only mode, /healthz and /metrics.
 */
import { chromium, type Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createListener,
  createWorker,
  defineConsumer,
  migrate,
  notify,
  PermanentError,
  type Listener,
  type PgqWorker,
} from '../../src/index.js';
import { startCli, type CliHandle } from '../support/cli.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { chromiumPath } from '../support/browser.js';
import { scrape, valueOf } from '../support/prometheus.js';
import { freePort } from '../support/servers.js';
import { waitFor } from '../support/wait.js';
import { Queue } from 'bullmq';

const AUTH = { username: 'admin', password: 's3cret:with-colon' };
const AUTH_HEADER = `Basic ${Buffer.from(`${AUTH.username}:${AUTH.password}`).toString('base64')}`;

let t: TestEnv;
let browser: Browser;
const services: Array<Listener | PgqWorker> = [];

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
  browser = await chromium.launch({
    executablePath: await chromiumPath(),
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});
afterAll(async () => {
  await browser?.close();
  for (const s of services.reverse()) await ('stop' in s ? s.stop() : s.close());
  await t.cleanup();
});

async function startWorker(...consumers: Parameters<typeof defineConsumer>[0][]): Promise<void> {
  const worker = createWorker({
    settings: apiSettings(t),
    consumers: consumers.map(defineConsumer),
  });
  services.push(worker);
  await worker.start();
}

async function startBoardCli(args: string[], env: NodeJS.ProcessEnv = t.env): Promise<string> {
  const port = await freePort();
  const board: CliHandle = startCli(['board', '--port', String(port), ...args], { env });
  const ready = await board.waitForOutput((l) => l.json?.msg === 'board ready');
  return String(ready.json?.url);
}

describe('board', () => {
  it('shows every consumer queue and a failed job, behind basic auth', async () => {
    await startWorker(
      { id: 'b-ok', channels: ['orders'], handle: () => undefined },
      {
        id: 'b-bad',
        channels: ['orders'],
        handle: (n) => {
          throw new PermanentError(`card declined for order ${String(n.id)}: boom-4711`);
        },
      },
    );
    const listener = createListener({ settings: apiSettings(t) });
    services.push(listener);
    await listener.start();
    await notify(t.pool, 'orders', { total: 1 }, { schema: t.schema });
    const bad = new Queue('b-bad', { connection: t.redis, prefix: t.prefix });
    await waitFor(async () => (await bad.getFailedCount()) === 1, { message: 'failed job' });
    await bad.close();

    const url = await startBoardCli(['--basic-auth', `${AUTH.username}:${AUTH.password}`]);
    // 401 without (or with wrong) credentials, on the page, the API and /metrics.
    for (const path of ['', 'api/queues', 'metrics']) {
      expect((await fetch(`${url}${path}`)).status, path).toBe(401);
    }
    const wrong = await fetch(url, {
      headers: { authorization: `Basic ${Buffer.from('admin:nope').toString('base64')}` },
    });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.get('www-authenticate')).toMatch(/^Basic /);
    const health = await fetch(`${url}healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: 'ok', postgres: 'ok', redis: 'ok' });

    const context = await browser.newContext({ httpCredentials: AUTH });
    const page = await context.newPage();
    await page.goto(url);
    await page.getByText('b-ok', { exact: true }).first().waitFor({ timeout: 15_000 });
    await page.getByText('b-bad', { exact: true }).first().waitFor();
    await page.goto(`${url}queue/b-bad?status=failed`);
    await page
      .getByText(/boom-4711/)
      .first()
      .waitFor({ timeout: 15_000 });
    // Not read-only: the retry action is offered (so its absence below means something).
    expect(await page.getByRole('button', { name: /retry/i }).count()).toBeGreaterThan(0);

    // A consumer registered now shows up without restarting the board.
    await startWorker({ id: 'b-new', channels: ['users'], handle: () => undefined });
    await page.goto(url);
    await page.getByText('b-new', { exact: true }).first().waitFor({ timeout: 15_000 });
    await context.close();

    const metrics = await scrape(`${url}metrics`, { headers: { authorization: AUTH_HEADER } });
    expect(valueOf(metrics, 'pgq_bridge_queue_jobs', { consumer: 'b-bad', state: 'failed' })).toBe(
      1,
    );
    expect(
      valueOf(metrics, 'pgq_bridge_queue_jobs', { consumer: 'b-ok', state: 'completed' }),
    ).toBe(1);
    expect(valueOf(metrics, 'pgq_bridge_backlog_rows')).toBe(0);
  });

  it('read-only mode under a base path offers no retry (credentials from BOARD_BASIC_AUTH)', async () => {
    const url = await startBoardCli(['--read-only', '--base-path', '/ops/queues'], {
      ...t.env,
      BOARD_BASIC_AUTH: `${AUTH.username}:${AUTH.password}`,
    });
    expect(url).toMatch(/\/ops\/queues\/$/);
    expect((await fetch(url)).status).toBe(401);
    expect((await fetch(`${url}healthz`)).status).toBe(200);
    const context = await browser.newContext({ httpCredentials: AUTH });
    const page = await context.newPage();
    await page.goto(`${url}queue/b-bad?status=failed`);
    await page
      .getByText(/boom-4711/)
      .first()
      .waitFor({ timeout: 15_000 });
    expect(await page.getByRole('button', { name: /retry/i }).count()).toBe(0);
    // The API refuses the action too.
    const res = await fetch(`${url}api/queues/b-bad/retry/failed`, {
      method: 'PUT',
      headers: { authorization: AUTH_HEADER },
    });
    expect(res.status).toBe(405);
    await context.close();
  });

  it('refuses a malformed --basic-auth (exit 2)', async () => {
    const board = startCli(
      ['board', '--port', String(await freePort()), '--basic-auth', 'nocolon'],
      {
        env: t.env,
      },
    );
    expect((await board.waitForExit()).code).toBe(2);
    expect(board.stderr()).toMatch(/user:password/);
  });
});
