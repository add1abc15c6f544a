/**
 * Issue 4: the demo's npm script (`npm run demo -- --once`) builds, migrates, installs the
 * trigger, runs listen + work, writes its sample changes, and exits 0 once the three consumers
 * did their work; this checks that work independently (outbox file, Redis, the ledger).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../support/cli.js';
import { q } from '../support/change.js';
import { createTestEnv, type TestEnv } from '../support/env.js';

let t: TestEnv;
let dir: string;
let demoSchema: string;

/** Runs `npm run demo -- --once` in its own process group; SIGKILLs the group on timeout. */
function runDemo(
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('npm', ['run', 'demo', '--', '--once'], {
      cwd: REPO_ROOT,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
    const signal = (name: NodeJS.Signals): void => {
      try {
        process.kill(-child.pid!, name);
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => {
      // SIGTERM first: the demo then stops the listen/work processes it started.
      signal('SIGTERM');
      setTimeout(() => signal('SIGKILL'), 10_000).unref();
      reject(new Error(`npm run demo did not exit within ${timeoutMs} ms:\n${out.slice(-4000)}`));
    }, timeoutMs);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

beforeAll(() => {
  t = createTestEnv();
  dir = mkdtempSync(join(tmpdir(), 'pgq-demo-'));
  demoSchema = `${t.schema}_app`;
});

afterAll(async () => {
  await t.pool.query(`DROP SCHEMA IF EXISTS ${q(demoSchema)} CASCADE`).catch(() => undefined);
  await t.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

describe('npm run demo', () => {
  it('processes the sample changes with all three consumers and exits 0', async () => {
    const outbox = join(dir, 'outbox.log');
    const { code, out } = await runDemo(
      { ...t.env, DEMO_SCHEMA: demoSchema, DEMO_OUTBOX: outbox },
      120_000,
    );
    expect(code, out.slice(-4000)).toBe(0);
    expect(out).toMatch(
      /done: 5 changes -> 3\/3 welcome e-mails, 2\/2 cache invalidations, 5\/5 webhooks/,
    );

    // Welcome e-mails: one per sign-up, carrying the context of the transaction that wrote it.
    const mails = readFileSync(outbox, 'utf8')
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { to: string; causedBy: unknown });
    expect(mails.map((m) => m.to).sort()).toEqual([
      'alice@example.com',
      'bob@example.com',
      'carol@example.com',
    ]);
    for (const mail of mails) {
      expect(mail.causedBy).toEqual({ actor: 'signup-form', requestId: 'req-1' });
    }

    // Cache: the renamed and the deleted user's entries are gone, the untouched one stays.
    const key = (id: number) => `${t.prefix}:demo-cache:user:${id}`;
    expect(await t.redis.exists(key(1), key(2))).toBe(0);
    expect(await t.redis.exists(key(3))).toBe(1);

    // The ledger: each consumer completed each of the 5 notifications exactly once.
    const { rows } = await t.pool.query<{ consumer_id: string; n: number }>(
      `SELECT d.consumer_id, count(*)::int AS n
         FROM ${q(t.schema)}.deliveries d JOIN ${q(t.schema)}.notifications n ON n.id = d.notification_id
        WHERE d.status = 'completed' AND n.channel = 'demo.users'
        GROUP BY d.consumer_id ORDER BY d.consumer_id`,
    );
    expect(rows).toEqual([
      { consumer_id: 'demo-cache-invalidation', n: 5 },
      { consumer_id: 'demo-webhook', n: 5 },
      { consumer_id: 'demo-welcome-email', n: 5 },
    ]);
  });
});
