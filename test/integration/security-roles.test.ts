/**
 * Issue 6, SECURITY.md: the least-privilege roles. The SQL block of SECURITY.md is run as written
 * (schema and role names made unique for this run), then:
 * - `listen` and `work` as a member of `pgq_bridge_runtime` bridge and handle what members of
 *   `pgq_bridge_writer` store (with `notify()` and through a `notify_data_change` trigger);
 *   `reconcile --verify` runs as the runtime, `status` as `pgq_bridge_monitor`, `cleanup` as
 *   `pgq_bridge_maintenance` (and is refused to the runtime);
 * - the runtime cannot change the schema (DDL, TRUNCATE, DELETE, editing a payload, `migrate`);
 *   the writer cannot read payloads;
 * - the board runs as the monitor, and with `--read-only` refuses every action through its API.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { notify } from '../../src/index.js';
import { REPO_ROOT, runCli, startCli, type CliHandle } from '../support/cli.js';
import { createTestEnv, randomId, type TestEnv } from '../support/env.js';
import {
  handledSummary,
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  waitForHandled,
  writeConsumers,
} from '../support/delivery.js';
import { freePort } from '../support/servers.js';

const GROUPS = ['runtime', 'writer', 'monitor', 'maintenance'] as const;
type Group = (typeof GROUPS)[number];

let t: TestEnv;
let s: string;
const suffix = randomId(6);
const groupRole = (g: Group): string => `pgq_bridge_${g}_${suffix}`;
const loginRole = (g: Group): string => `pgqsec_${g}_${suffix}`;
const password = `pw-${randomId(12)}`;
const pools: pg.Pool[] = [];
const running: CliHandle[] = [];

/** The ```sql block that follows the least-privilege marker in SECURITY.md. */
function securitySql(): string {
  const text = readFileSync(join(REPO_ROOT, 'SECURITY.md'), 'utf8');
  const match = /<!-- least-privilege-sql[^>]*-->\s*```sql\n([\s\S]*?)```/.exec(text);
  if (!match) throw new Error('SECURITY.md has no least-privilege SQL block');
  return match[1];
}

function urlFor(g: Group): string {
  const url = new URL(t.databaseUrl);
  url.username = loginRole(g);
  url.password = password;
  return url.toString();
}

function envFor(g: Group): NodeJS.ProcessEnv {
  return { ...t.env, DATABASE_URL: urlFor(g) };
}

function poolFor(g: Group): pg.Pool {
  const pool = new pg.Pool({ connectionString: urlFor(g), max: 2 });
  pool.on('error', () => undefined);
  pools.push(pool);
  return pool;
}

beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  await migrateWithHandledTable(t);
  const sql = securitySql()
    .replace(/\bpgq_bridge_(runtime|writer|monitor|maintenance)\b/g, `pgq_bridge_$1_${suffix}`)
    .replace(/\bpgq_bridge\b/g, s);
  await t.pool.query(sql);
  for (const g of GROUPS) {
    await t.pool.query(
      `CREATE ROLE ${loginRole(g)} LOGIN PASSWORD '${password}' IN ROLE ${groupRole(g)}`,
    );
  }
  // The application's own tables need their own grants (not pgq-bridge's business).
  await t.pool.query(`
    CREATE TABLE ${s}.orders (id int PRIMARY KEY, total int);
    GRANT INSERT ON ${s}.handled TO ${loginRole('runtime')};
    GRANT USAGE ON SEQUENCE ${s}.handled_seq_seq TO ${loginRole('runtime')};
    GRANT INSERT ON ${s}.orders TO ${loginRole('writer')};
  `);
  // The schema's owner installs the trigger.
  const add = await runCli(
    ['triggers', 'add', `${s}.orders`, '--channel', 'orders', '--events', 'insert'],
    { env: t.env },
  );
  expect(add.code, add.stderr).toBe(0);
});

afterAll(async () => {
  for (const handle of running) if (!handle.exited) handle.kill('SIGKILL');
  for (const pool of pools) await pool.end().catch(() => undefined);
  for (const g of GROUPS) {
    for (const role of [loginRole(g), groupRole(g)]) {
      await t.pool
        .query(`DROP OWNED BY ${role}; DROP ROLE ${role}`)
        .catch((e: Error) => console.warn(`dropping ${role}: ${e.message}`));
    }
  }
  await t.cleanup();
  removeConsumerDirs();
});

async function columnsOfNotifications(): Promise<string[]> {
  const { rows } = await t.pool.query<{ c: string }>(
    `SELECT column_name AS c FROM information_schema.columns
      WHERE table_schema = $1 AND table_name = 'notifications' ORDER BY column_name`,
    [t.schema],
  );
  return rows.map((r) => r.c);
}

describe('least-privilege roles of SECURITY.md', () => {
  it('listen and work as the runtime role deliver what the writer role stores', async () => {
    const dir = writeConsumers({
      'rec.mjs': `${RECORDER}
export default defineConsumer({ id: 'rec', channels: ['orders'], async handle(n) { await record('rec', n); } });`,
    });
    const work = await startWork(envFor('runtime'), dir, 1);
    const listen = await startListen(envFor('runtime'));
    running.push(work, listen);

    const writer = poolFor('writer');
    for (let i = 0; i < 5; i++) await notify(writer, 'orders', { i }, { schema: t.schema });
    for (let i = 1; i <= 3; i++) {
      await writer.query(`INSERT INTO ${s}.orders VALUES ($1, $2)`, [i, i * 10]);
    }
    await waitForHandled(t.pool, t.schema, 8, 30_000);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      rec: { runs: 8, distinct: 8, duplicates: 0 },
    });
    const ledger = await t.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${s}.deliveries WHERE status = 'completed'`,
    );
    expect(ledger.rows[0].n).toBe(8);
    await stopGracefully(listen);
    await stopGracefully(work);
    for (const handle of [listen, work]) {
      expect(handle.stdout() + handle.stderr()).not.toMatch(/permission denied|must be owner/);
      expect(handle.logs().filter((l) => Number(l.level) >= 50)).toEqual([]);
    }

    const reconcile = await runCli(['reconcile', '--verify', '--json'], { env: envFor('runtime') });
    expect(reconcile.code, reconcile.stderr).toBe(0);
    expect(JSON.parse(reconcile.stdout)).toMatchObject({ enqueued: 0, alreadyDone: 8 });

    const status = await runCli(['status', '--json'], { env: envFor('monitor') });
    expect(status.code, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout)).toMatchObject({ healthy: true });

    // cleanup deletes: refused to the runtime, allowed to maintenance.
    const refused = await runCli(['cleanup', '--days', '0'], { env: envFor('runtime') });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/permission denied for table (notifications|deliveries)/);
    const cleanup = await runCli(['cleanup', '--days', '0', '--json'], {
      env: envFor('maintenance'),
    });
    expect(cleanup.code, cleanup.stderr).toBe(0);
    expect(JSON.parse(cleanup.stdout)).toMatchObject({ deleted: 8, ledgerRowsDeleted: 8 });
  });

  it('the runtime role cannot change the schema; the writer cannot read payloads', async () => {
    const before = await columnsOfNotifications();
    const runtime = poolFor('runtime');
    const forbidden = [
      `ALTER TABLE ${s}.notifications ADD COLUMN evil int`,
      `ALTER TABLE ${s}.deliveries DROP CONSTRAINT deliveries_status_check`,
      `DROP TABLE ${s}.deliveries`,
      `CREATE TABLE ${s}.evil (id int)`,
      `CREATE OR REPLACE FUNCTION ${s}.notify(channel text, payload jsonb) RETURNS bigint
         LANGUAGE sql AS 'SELECT 1::bigint'`,
      `CREATE SCHEMA evil_${suffix}`,
      `TRUNCATE ${s}.notifications`,
      `DELETE FROM ${s}.notifications`,
      `UPDATE ${s}.notifications SET payload = '{"forged": true}'`,
      `DROP TRIGGER IF EXISTS "pgq_bridge_${t.schema}_insert" ON ${s}.orders`,
    ];
    for (const sql of forbidden) {
      const error = await runtime.query(sql).then(
        () => undefined,
        (e: { code?: string; message: string }) => e,
      );
      expect(error, sql).toMatchObject({ code: '42501' }); // insufficient_privilege
      expect(error?.message, sql).toMatch(/permission denied|must be owner/);
    }
    const migrate = await runCli(['migrate'], { env: envFor('runtime') });
    expect(migrate.code).toBe(1);
    expect(migrate.stderr).toMatch(/^pgq-bridge: permission denied/);

    const writer = poolFor('writer');
    for (const sql of [
      `SELECT payload FROM ${s}.notifications`,
      `SELECT * FROM ${s}.deliveries`,
      `UPDATE ${s}.notifications SET bridged_at = now()`,
      `DELETE FROM ${s}.notifications`,
    ]) {
      const error = await writer.query(sql).then(
        () => undefined,
        (e: { code?: string }) => e,
      );
      expect(error, sql).toMatchObject({ code: '42501' });
    }
    expect(await columnsOfNotifications()).toEqual(before);
    const triggers = await t.pool.query(
      `SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal`,
      [`${s}.orders`],
    );
    expect(triggers.rows[0].n).toBe(1);
  });

  it('the board runs as the monitor role; read-only refuses every action through its API', async () => {
    const port = await freePort();
    const auth = { user: 'ops', pass: `p-${randomId(10)}` };
    const board = startCli(['board', '--port', String(port), '--read-only'], {
      env: { ...envFor('monitor'), BOARD_BASIC_AUTH: `${auth.user}:${auth.pass}` },
    });
    running.push(board);
    const ready = await board.waitForOutput((l) => l.json?.msg === 'board ready', 20_000);
    const url = String(ready.json?.url);
    expect(url).toBe(`http://127.0.0.1:${port}/`); // this machine only, by default
    const headers = {
      authorization: `Basic ${Buffer.from(`${auth.user}:${auth.pass}`).toString('base64')}`,
      'content-type': 'application/json',
    };
    expect((await fetch(`${url}api/queues`)).status).toBe(401);
    expect((await fetch(`${url}healthz`)).status).toBe(200);
    const queues = await fetch(`${url}api/queues`, { headers });
    expect(queues.status).toBe(200);
    expect(JSON.stringify(await queues.json())).toContain('"rec"');
    const actions: Array<[string, string, unknown?]> = [
      ['POST', 'api/queues/rec/add', { name: 'orders', data: { id: '1' } }],
      ['PUT', 'api/queues/rec/obliterate'],
      ['PUT', 'api/queues/rec/empty'],
      ['PUT', 'api/queues/rec/pause'],
      ['PUT', 'api/queues/rec/clean/completed'],
      ['PUT', 'api/queues/rec/retry/failed'],
      ['PUT', 'api/queues/rec/concurrency', { concurrency: 100 }],
      ['PATCH', 'api/queues/rec/n1/update-data', { jobData: { forged: true } }],
    ];
    for (const [method, path, body] of actions) {
      const res = await fetch(`${url}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      expect(res.status, `${method} ${path}`).toBe(405);
    }
    await stopGracefully(board);
    expect(board.stdout() + board.stderr()).not.toContain(auth.pass);
  });
});
