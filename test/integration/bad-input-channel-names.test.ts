/**
 * Issue 2, bad input: invalid channel names (API, CLI, SQL), non-JSON payloads, unknown commands
 * and options (exit 2), unreachable Postgres for one-shot commands (exit 1, one line, no stack),
 * a foreign NOTIFY with a junk payload on the listener's wake-up channel, and a row written around
 * notify() with an invalid channel.
 */
import { afterAll, beforeAll, describe, expect, it, type ExpectStatic } from 'vitest';
import { notify, PgqError } from '../../src/index.js';
import { runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  handledSummary,
  hasMsg,
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
import { sleep } from '../support/wait.js';

let t: TestEnv;
beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

async function storedCount(): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM "${t.schema}".notifications`,
  );
  return rows[0].n;
}

/** Expects a usage error: exit 2, nothing on stdout, `message` on stderr. */
function expectUsageError(
  result: { code: number | null; stdout: string; stderr: string },
  message: RegExp,
  check: ExpectStatic = expect,
): void {
  check(result.code, result.stderr).toBe(2);
  check(result.stderr).toMatch(message);
  check(result.stderr).not.toMatch(/^\s+at /m);
}

const BAD_CHANNELS = ['has space', 'x'.repeat(64), '', "quote'", 'semi;colon', 'é'];

describe('invalid channel names', () => {
  it('are refused by the API before touching the database', async () => {
    for (const channel of BAD_CHANNELS) {
      const error = await notify(t.pool, channel, {}, { schema: t.schema }).catch((e) => e);
      expect(error, channel).toBeInstanceOf(PgqError);
      expect(error.code).toBe('PGQ_INVALID_CHANNEL');
      expect(error.message).toContain('invalid channel name');
    }
    expect(await storedCount()).toBe(0);
  });

  it('are refused by the SQL notify() with a clear error', async () => {
    for (const channel of [...BAD_CHANNELS, null]) {
      const error = await t.pool
        .query(`SELECT "${t.schema}".notify($1, '{}')`, [channel])
        .catch((e) => e);
      expect(error.message, String(channel)).toMatch(/^pgq-bridge: invalid channel name/);
      expect(error.code).toBe('22023'); // invalid_parameter_value
    }
    expect(await storedCount()).toBe(0);
  });

  it('make the CLI exit 2, even when Postgres is unreachable', async () => {
    expectUsageError(
      await runCli(['notify', 'has space', '{}'], { env: t.env }),
      /invalid channel name "has space"/,
    );
    const unreachable = `postgres://postgres@127.0.0.1:${await freePort()}/x`;
    expectUsageError(
      await runCli(['notify', 'bad/channel', '{}'], {
        env: { ...t.env, DATABASE_URL: unreachable },
      }),
      /invalid channel name "bad\/channel"/,
    );
    expect(await storedCount()).toBe(0);
  });
});

// Independent child processes: run them side by side to keep the file quick.
describe.concurrent('CLI usage errors exit 2 with a clear message', () => {
  it.for([
    [['notify', 'orders', '{not json'], /not valid JSON/],
    [['notify', 'orders', ''], /not valid JSON/],
    [['notify', 'orders'], /missing required argument 'json'/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['listen', '--frob'], /unknown option '--frob'/],
    [['work', '--consumers-dirr', 'x'], /unknown option '--consumers-dirr'/],
    [['--nope', 'migrate'], /unknown option '--nope'/],
    [['listen', '--batch-size', '0'], /--batch-size.*expected a positive integer/],
    [['listen', '--reconnect-delay', 'soon'], /expected a number >= 0/],
    [['--log-level', 'loud', 'migrate'], /--log-level.*loud.*Allowed choices/],
    [['work', '--consumers-dir', '/definitely/missing'], /consumers-dir: cannot read/],
  ] as const)('%j', async ([args, message], { expect: check }) => {
    expectUsageError(await runCli([...args], { env: t.env }), message, check);
  });

  it('does not store anything for a refused payload', async () => {
    expect(await storedCount()).toBe(0);
  });
});

describe('unreachable Postgres', () => {
  it('makes migrate and notify exit 1 with a one-line error and no password', async () => {
    const url = `postgres://someone:pw-s3cr3t@127.0.0.1:${await freePort()}/x`;
    for (const args of [['migrate'], ['notify', 'orders', '{"a":1}']]) {
      for (const level of ['info', 'debug']) {
        const result = await runCli(args, {
          env: { ...t.env, DATABASE_URL: url, LOG_LEVEL: level },
        });
        expect(result.code, result.stderr).toBe(1);
        expect(result.stdout + result.stderr).not.toContain('pw-s3cr3t');
        if (level === 'info') {
          expect(result.stderr).toMatch(/^pgq-bridge: .*ECONNREFUSED.*\n$/);
          expect(result.stderr.trim().split('\n')).toHaveLength(1);
        }
      }
    }
  });
});

/** A worker whose consumer `rec` records every notification on `orders`. */
function startRecordingWorker(): ReturnType<typeof startWork> {
  const dir = writeConsumers({
    'rec.mjs': `${RECORDER}
export default defineConsumer({ id: 'rec', channels: ['orders'],
  async handle(n) { await record('rec', n); } });`,
  });
  return startWork(t.env, dir, 1);
}

describe('a foreign NOTIFY on the wake-up channel', () => {
  it('is ignored and logged, and bridging carries on', async () => {
    const work = await startRecordingWorker();
    const listen = await startListen(t.env, ['--poll-interval', '60']);
    await t.pool.query(`NOTIFY "${t.schema}", 'junk'`);
    await t.pool.query(`SELECT pg_notify($1, $2)`, [t.schema, '{"id": "not-ours", "x": [1,2']);
    await listen.waitForOutput(hasMsg(/ignoring unexpected NOTIFY payload/));
    const ids = [];
    for (let i = 0; i < 5; i++) {
      ids.push(await notify(t.pool, 'orders', { i }, { schema: t.schema }));
    }
    // The poll interval is 60 s: only the wake-ups can have delivered these so fast.
    await waitForHandled(t.pool, t.schema, 5, 10_000);
    await sleep(300);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      rec: { runs: 5, distinct: 5, duplicates: 0 },
    });
    expect(listen.exited).toBe(false);
    const warnings = listen.logs().filter(hasMsg(/ignoring unexpected NOTIFY payload/));
    expect(warnings.length).toBe(2);
    expect(listen.logs().filter((l) => Number(l.level) >= 50)).toEqual([]);
    await stopGracefully(listen);
    await stopGracefully(work);
  });
});

describe('a row written around notify() with an invalid channel', () => {
  // The table has no CHECK on channel since migration 0006 (it cost every notify() ~3 µs):
  // notify() is the gate, and such a row must reach nobody and stop nothing.
  it('is bridged to no consumer, and bridging carries on', async () => {
    const work = await startRecordingWorker();
    const listen = await startListen(t.env);
    await t.pool.query(`DELETE FROM "${t.schema}".handled`);
    await t.pool.query(
      `INSERT INTO "${t.schema}".notifications (channel, payload) VALUES ('has space', '{}'), ('', '{}')`,
    );
    for (let i = 0; i < 3; i++) await notify(t.pool, 'orders', { i }, { schema: t.schema });
    await waitForHandled(t.pool, t.schema, 3, 10_000);
    const { rows } = await t.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
    );
    expect(rows[0].n).toBe(0);
    await sleep(300);
    expect(await handledSummary(t.pool, t.schema)).toEqual({
      rec: { runs: 3, distinct: 3, duplicates: 0 },
    });
    expect(listen.exited).toBe(false);
    expect(listen.logs().filter((l) => Number(l.level) >= 50)).toEqual([]);
    await stopGracefully(listen);
    await stopGracefully(work);
  });
});
