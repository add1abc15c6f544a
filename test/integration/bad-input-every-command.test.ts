/**
 * Issue 6, bad input, at the process level (the pure validators have unit tests in
 * test/unit/consumer-definitions.test.ts and change-capture.test.ts; core-bad-input and triggers-cli
 * cover the first CLI cases). Here:
 * - every command with missing, malformed and hostile arguments and settings (quotes, semicolons,
 *   unicode, 64+ bytes): exit 2, a clear one-line message, nothing created or changed;
 * - consumer files that throw at import, export nothing, repeat an id or carry a hostile id or
 *   channel: `work` exits 2 naming the file, registers nothing, and stored rows stay untouched;
 * - a notification row deleted between its NOTIFY and the claim;
 * - payloads nested 10,000 and 100,000 levels deep, and a 50 MB payload through the API;
 * - a handler that never resolves: the consumer's `timeout` fails it, the worker goes on.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { notify } from '../../src/index.js';
import { runCli, type CliHandle, type RunResult } from '../support/cli.js';
import { createTestEnv, randomId, type TestEnv } from '../support/env.js';
import {
  hasMsg,
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';
import { freePort } from '../support/servers.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let s: string;
/** A consumers dir with one valid consumer, for commands that need one. */
let validDir: string;

beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  await migrateWithHandledTable(t);
  await t.pool.query(`CREATE TABLE ${s}.canary (id int)`);
  validDir = writeConsumers({
    'rec.mjs': `${RECORDER}
export default defineConsumer({ id: 'rec', channels: ['orders'], async handle(n) { await record('rec', n); } });`,
  });
});

afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

async function scalar(sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(sql, params);
  return rows[0].n;
}

const stored = (): Promise<number> => scalar(`SELECT count(*)::int AS n FROM ${s}.notifications`);

/** Exit 2, one clear line on stderr (no stack trace), nothing on stdout. */
function expectUsageError(result: RunResult, message: RegExp, what: string): void {
  expect(result.code, `${what}: ${result.stderr}`).toBe(2);
  expect(result.stderr, what).toMatch(message);
  expect(result.stderr, what).not.toMatch(/^\s+at /m);
  expect(result.stdout, what).toBe('');
}

/** Runs `items` through `fn`, `limit` at a time. */
async function inPool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>) {
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

const HOSTILE_SCHEMAS = [
  `x"; DROP SCHEMA public CASCADE; --`,
  `x'; DROP TABLE canary; --`,
  'schéma',
  's'.repeat(64),
];

describe('every command refuses bad arguments: exit 2, a clear message, nothing changed', () => {
  it('missing, malformed and hostile arguments', async () => {
    const port = String(await freePort());
    const cases: Array<[string[], RegExp]> = [
      [['migrate', 'extra'], /too many arguments for 'migrate'/],
      [['notify'], /missing required argument 'channel'/],
      [['notify', `a';DROP TABLE canary;--`, '{}'], /invalid channel name/],
      [['notify', 'ørders', '{}'], /invalid channel name "ørders"/],
      [['notify', 'c'.repeat(64), '{}'], /invalid channel name/],
      [['notify', 'orders', `'); DROP TABLE canary; --`], /not valid JSON/],
      [['notify', 'orders', '{"a": NaN}'], /not valid JSON/],
      [['triggers', 'add'], /missing required argument 'table'/],
      [['triggers', 'add', `"${'t'.repeat(64)}"`], /identifier longer than 63 bytes/],
      [['triggers', 'add', `"${'ü'.repeat(32)}"`], /identifier longer than 63 bytes/],
      [['triggers', 'add', `canary" ; DROP TABLE canary; --`], /invalid table name/],
      [['triggers', 'add', `${t.schema}.canary`, '--channel', `x';--`], /invalid channel name/],
      [
        ['triggers', 'add', 'canary', '--columns', `"a`],
        /invalid column name .*not a valid identifier/,
      ],
      [['triggers', 'remove'], /missing required argument 'table'/],
      [['triggers', 'remove', 'a.b.c'], /invalid table name/],
      [['triggers', 'list', 'extra'], /too many arguments for 'list'/],
      [['triggers', 'drop', 'canary'], /unknown command 'drop'/],
      [['listen', '--channels', `orders,a'b`], /invalid channel name "a'b"/],
      [['listen', '--channels', ''], /expected a comma-separated list/],
      [['listen', '--recover', '--skip-playback'], /contradict each other/],
      [['listen', '--poll-interval', '-1'], /expected a number >= 0/],
      [['listen', '--batch-size', '1e3'], /expected a positive integer/],
      [['listen', '--metrics-port', '0'], /expected a positive integer/],
      [['work'], /no consumers: pass --consumers-dir/],
      [['work', '--consumers-dir'], /argument missing/],
      [['work', '--consumers-dir', validDir, '--consumers', `rec;x`], /unknown consumer "rec;x"/],
      [
        ['work', '--consumers-dir', validDir, '--exclude-consumers', 'rec'],
        /every consumer is excluded/,
      ],
      [['work', '--consumers-dir', validDir, '--concurrency', '0'], /expected a positive integer/],
      [
        ['work', '--consumers-dir', validDir, '--shutdown-timeout', 'soon'],
        /expected a number >= 0/,
      ],
      [['reconcile', '--since', 'yesterday'], /expected an ISO date\/time/],
      [['reconcile', '--channels', 'a b'], /invalid channel name "a b"/],
      [['reconcile', '--consumers', `x'; DELETE FROM deliveries; --`], /invalid consumer id/],
      [['reconcile', '--consumers', 'c'.repeat(65)], /invalid consumer id/],
      [['reconcile', '--batch-size', '0'], /expected a positive integer/],
      [['cleanup'], /required option '--days <n>' not specified/],
      [['cleanup', '--days', '-1'], /expected a number >= 0/],
      [['cleanup', '--days', 'seven'], /expected a number >= 0/],
      [['status', '--max-lag', 'x'], /expected a number >= 0/],
      [['board', '--port', 'http'], /expected a positive integer/],
      [['board', '--port', port, '--base-path', 'ops'], /expected a path starting with \//],
      [['start', '--consumers-dir', validDir, '--batch-size', '0'], /expected a positive integer/],
      [['--prefix', `p'; FLUSHALL`, 'status'], /invalid BullMQ prefix/],
      [['--prefix', 'p'.repeat(65), 'status'], /invalid BullMQ prefix/],
      [['--database-url', 'not a url', 'status'], /database-url \(DATABASE_URL\): not a valid URL/],
      [
        ['--redis-url', 'http://127.0.0.1:6379', 'status'],
        /redis-url \(REDIS_URL\): expected a redis/,
      ],
    ];
    // A hostile schema name, on every command that reaches the database.
    const commands = [
      ['migrate'],
      ['notify', 'orders', '{}'],
      ['listen'],
      ['work', '--consumers-dir', validDir],
      ['reconcile'],
      ['cleanup', '--days', '1'],
      ['status'],
      ['triggers', 'list'],
      ['board', '--port', port],
      ['start', '--consumers-dir', validDir, '--port', port],
    ];
    for (const [i, schema] of HOSTILE_SCHEMAS.entries()) {
      // Every command once, each schema on a few (all four on migrate).
      for (const command of commands.filter(
        (_, j) => j % HOSTILE_SCHEMAS.length === i || j === 0,
      )) {
        cases.push([['--schema', schema, ...command], /invalid schema name/]);
      }
    }
    await inPool(cases, 4, async ([args, message]) => {
      expectUsageError(await runCli(args, { env: t.env }), message, JSON.stringify(args));
    });
    // Nothing was created, dropped or stored.
    expect(await scalar(`SELECT count(*)::int AS n FROM ${s}.canary`)).toBe(0);
    expect(
      await scalar(
        `SELECT count(*)::int AS n FROM pg_namespace
          WHERE nspname ~ '[''";]' OR nspname = 'schéma' OR nspname LIKE 'sss%'`,
      ),
    ).toBe(0);
    expect(
      await scalar(`SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'public'`),
    ).toBe(1);
    expect(await stored()).toBe(0);
    expect(await scalar(`SELECT count(*)::int AS n FROM ${s}.consumers`)).toBe(0);
    expect(
      await scalar(`SELECT count(*)::int AS n FROM pg_trigger WHERE tgrelid = $1::regclass`, [
        `${s}.canary`,
      ]),
    ).toBe(0);
    // About 60 CLI processes one after another: a minute on a busy 2-core machine.
  }, 180_000);

  it('a unicode table name works when quoted: the trigger is installed, fires and is listed', async () => {
    const table = 'Zähler ✓ 表';
    await t.pool.query(`CREATE TABLE ${s}."${table}" (id int PRIMARY KEY)`);
    const add = await runCli(['triggers', 'add', `${s}."${table}"`, '--channel', 'unicode'], {
      env: t.env,
    });
    expect(add.code, add.stderr).toBe(0);
    await t.pool.query(`INSERT INTO ${s}."${table}" VALUES (1)`);
    const { rows } = await t.pool.query<{ payload: { table: string; new: { id: number } } }>(
      `SELECT payload FROM ${s}.notifications WHERE channel = 'unicode'`,
    );
    expect(rows.map((r) => [r.payload.table, r.payload.new])).toEqual([[table, { id: 1 }]]);
    const list = await runCli(['triggers', 'list', '--json'], { env: t.env });
    expect(list.stdout).toContain(table);
    const remove = await runCli(['triggers', 'remove', `${s}."${table}"`], { env: t.env });
    expect(remove.code, remove.stderr).toBe(0);
    await t.pool.query(`DELETE FROM ${s}.notifications`);
  });
});

describe('consumer files that cannot be used', () => {
  it('make work exit 2 naming the file; nothing is registered and stored rows stay', async () => {
    const ids = [];
    for (let i = 0; i < 3; i++)
      ids.push(await notify(t.pool, 'orders', { i }, { schema: t.schema }));
    const ok = `import { defineConsumer } from 'pgq-bridge';
export default defineConsumer({ id: 'good', channels: ['orders'], handle() {} });`;
    const cases: Array<[Record<string, string>, RegExp]> = [
      [
        { 'a.mjs': ok, 'boom.mjs': `throw new Error('boom at import');` },
        /boom\.mjs failed to load: boom at import/,
      ],
      [
        { 'a.mjs': ok, 'empty.mjs': 'export const nothing = 1;' },
        /empty\.mjs has no default export/,
      ],
      [
        { 'a.mjs': ok, 'b.mjs': ok.replace('good', 'good') },
        /duplicate consumer id "good" in .*b\.mjs \(also in .*a\.mjs\)/,
      ],
      [
        { 'a.mjs': ok.replace(`'good'`, `"x'; DROP TABLE canary; --"`) },
        /a\.mjs: invalid consumer id/,
      ],
      [
        { 'a.mjs': ok.replace(`['orders']`, `['orders; DROP TABLE canary']`) },
        /invalid channel name/,
      ],
      [
        { 'a.mjs': ok.replace('handle() {}', 'handle: 42') },
        /handle\(notification, job\) must be a function/,
      ],
      [
        { 'a.mjs': ok.replace('handle() {}', 'handle() {}, timeout: -5') },
        /timeout must be a positive integer/,
      ],
    ];
    await inPool(cases, 4, async ([files, message]) => {
      const dir = writeConsumers(files);
      expectUsageError(
        await runCli(['work', '--consumers-dir', dir], { env: t.env }),
        message,
        Object.keys(files).join(','),
      );
    });
    expect(await scalar(`SELECT count(*)::int AS n FROM ${s}.consumers`)).toBe(0);
    expect(await scalar(`SELECT count(*)::int AS n FROM ${s}.canary`)).toBe(0);
    const { rows } = await t.pool.query<{ id: string }>(
      `SELECT id::text FROM ${s}.notifications WHERE bridged_at IS NULL ORDER BY id`,
    );
    expect(rows.map((r) => r.id)).toEqual(ids);
    await t.pool.query(`DELETE FROM ${s}.notifications`);
  });
});

/** Depth of `[[[...]]]`, counted without recursion. */
function depthOf(value: unknown): number {
  let depth = 0;
  for (let v = value; Array.isArray(v); v = v[0]) depth++;
  return depth;
}

function nested(depth: number): string {
  return '['.repeat(depth) + ']'.repeat(depth);
}

describe('while listen and work run', () => {
  let work: CliHandle;
  let listen: CliHandle | undefined;

  beforeAll(async () => {
    const dir = writeConsumers({
      'consumers.mjs': `${RECORDER}
function depthOf(v) { let d = 0; while (Array.isArray(v)) { d++; v = v[0]; } return d; }
export default [
  defineConsumer({ id: 'gone', channels: ['gone'],
    async handle(n) { await record('gone', n, JSON.stringify(n.payload)); } }),
  defineConsumer({ id: 'deep', channels: ['deep'],
    async handle(n) { await record('deep', n, String(depthOf(n.payload))); } }),
  defineConsumer({ id: 'big', channels: ['big'],
    async handle(n) { const s = n.payload.s; await record('big', n, s.length + ':' + sha256(s)); } }),
  defineConsumer({ id: 'hang', channels: ['hang'], timeout: 300, attempts: 2, backoff: 50,
    concurrency: 1,
    // Hangs until its signal aborts, then resolves: a late success still fails the attempt.
    handle(n, job, ctx) {
      return n.payload.hang
        ? new Promise((resolve) => ctx.signal.addEventListener('abort', resolve))
        : record('hang', n);
    } }),
];`,
    });
    work = await startWork(t.env, dir, 4);
  });

  afterAll(async () => {
    if (listen) await stopGracefully(listen);
    await stopGracefully(work);
  });

  async function handled(consumer: string): Promise<Array<{ id: string; info: string | null }>> {
    const { rows } = await t.pool.query<{ id: string; info: string | null }>(
      `SELECT notification_id::text AS id, info FROM ${s}.handled WHERE consumer = $1 ORDER BY seq`,
      [consumer],
    );
    return rows;
  }

  it('a row deleted between its NOTIFY and the claim is skipped; the rest is delivered', async () => {
    const a = await notify(t.pool, 'gone', { n: 'a' }, { schema: t.schema });
    const b = await notify(t.pool, 'gone', { n: 'b' }, { schema: t.schema });
    // Committed and notified; a transaction holds row a (the claim skips locked rows) ...
    const holder = new pg.Client({ connectionString: t.databaseUrl });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`SELECT id FROM ${s}.notifications WHERE id = $1 FOR UPDATE`, [a]);
      // ... while a listener starts and sweeps (60 s safety poll: only wake-ups and sweeps count).
      listen = await startListen(t.env, ['--poll-interval', '60']);
      await waitFor(async () => (await handled('gone')).length === 1, { timeoutMs: 15_000 });
      // ... and deletes it before any claim could take it.
      await holder.query(`DELETE FROM ${s}.notifications WHERE id = $1`, [a]);
      await holder.query('COMMIT');
    } finally {
      await holder.end();
    }
    const c = await notify(t.pool, 'gone', { n: 'c' }, { schema: t.schema });
    await waitFor(async () => (await handled('gone')).length === 2, { timeoutMs: 15_000 });
    await sleep(300);
    expect(await handled('gone')).toEqual([
      { id: b, info: '{"n":"b"}' },
      { id: c, info: '{"n":"c"}' },
    ]);
    expect(listen.logs().filter((l) => Number(l.level) >= 50)).toEqual([]);
    expect(listen.exited).toBe(false);
  });

  it('10,000 levels deep: the API refuses it clearly (nothing stored); SQL stores it and it is delivered', async () => {
    const before = await stored();
    const error = await notify(t.pool, 'deep', JSON.parse(nested(10_000)), {
      schema: t.schema,
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'PGQ_INVALID_PAYLOAD' });
    expect((error as Error).message).toMatch(/payload is not serializable to JSON/);
    // The CLI parses it, then cannot serialize it either: a one-line runtime error.
    const cli = await runCli(['notify', 'deep', nested(10_000)], { env: t.env });
    expect(cli.code, cli.stderr).toBe(1);
    expect(cli.stderr).toMatch(/^pgq-bridge: payload is not serializable to JSON: .*\n$/);
    expect(await stored()).toBe(before);
    // 100,000 levels: Postgres refuses it (stack depth), nothing is stored.
    const tooDeep = await t.pool
      .query(`SELECT ${s}.notify('deep', $1::jsonb)`, [nested(100_000)])
      .catch((e: { code?: string; message: string }) => e);
    expect(tooDeep).toMatchObject({ code: '54001', message: 'stack depth limit exceeded' });
    expect(await stored()).toBe(before);
    // 10,000 levels written in SQL (any language can): stored, bridged and delivered intact.
    const { rows } = await t.pool.query<{ id: string }>(
      `SELECT ${s}.notify('deep', $1::jsonb)::text AS id`,
      [nested(10_000)],
    );
    await waitFor(async () => (await handled('deep')).length === 1, { timeoutMs: 20_000 });
    expect(await handled('deep')).toEqual([{ id: rows[0].id, info: '10000' }]);
    expect(depthOf(JSON.parse(nested(10_000)))).toBe(10_000);
  });

  it('a 50 MB payload through the API is stored and delivered intact', async () => {
    const text = 'x'.repeat(25 * 1024 * 1024) + 'é'.repeat(12.5 * 1024 * 1024); // 50 MiB UTF-8
    const id = await notify(t.pool, 'big', { s: text }, { schema: t.schema });
    const { rows } = await t.pool.query<{ bytes: number }>(
      `SELECT octet_length(payload->>'s')::int AS bytes FROM ${s}.notifications WHERE id = $1`,
      [id],
    );
    expect(rows[0].bytes).toBe(50 * 1024 * 1024);
    await waitFor(async () => (await handled('big')).length === 1, {
      timeoutMs: 60_000,
      intervalMs: 250,
    });
    const sha = createHash('sha256').update(text).digest('hex');
    expect(await handled('big')).toEqual([{ id, info: `${text.length}:${sha}` }]);
  });

  it('a handler that hangs until its signal aborts is failed by its timeout; the worker carries on', async () => {
    const hung = await notify(t.pool, 'hang', { hang: true }, { schema: t.schema });
    const fine = await notify(t.pool, 'hang', { hang: false }, { schema: t.schema });
    // Concurrency 1: the second one runs only once both attempts of the first timed out.
    await waitFor(async () => (await handled('hang')).length === 1, { timeoutMs: 20_000 });
    expect((await handled('hang')).map((r) => r.id)).toEqual([fine]);
    await waitFor(
      async () =>
        (await scalar(
          `SELECT count(*)::int AS n FROM ${s}.deliveries WHERE consumer_id = 'hang' AND status = 'failed'`,
        )) === 1,
      { timeoutMs: 10_000 },
    );
    const { rows } = await t.pool.query(
      `SELECT notification_id::text AS id, attempts, last_error FROM ${s}.deliveries
        WHERE consumer_id = 'hang' AND status = 'failed'`,
    );
    expect(rows).toEqual([
      { id: hung, attempts: 2, last_error: expect.stringMatching(/handler of hang timed out/) },
    ]);
    expect(work.logs().some(hasMsg('handler failed for good (job kept as failed)'))).toBe(true);
    // The job stays in BullMQ's failed set (a dead letter, replayable).
    expect(await t.redis.zscore(`${t.prefix}:hang:failed`, `n${hung}`)).not.toBeNull();
  });
});

describe('a consumers dir path that is hostile', () => {
  it('is only ever a path: a name with quotes and semicolons loads like any other', async () => {
    // Inside validDir (removed with it); not a consumer file there, so it loads nothing itself.
    const dir = join(validDir, `sub-${randomId()}-'; DROP TABLE canary; --`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(
      join(dir, 'c.mjs'),
      `import { defineConsumer } from 'pgq-bridge';
export default defineConsumer({ id: 'pathy', channels: ['orders'], handle() {} });`,
    );
    const list = await runCli(['work', '--consumers-dir', dir, '--list-consumers'], {
      env: t.env,
    });
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toBe('pathy\torders\n');
    expect(await scalar(`SELECT count(*)::int AS n FROM ${s}.canary`)).toBe(0);
  });
});
