/**
 * The ledger lookup the worker makes before every attempt (src/consume/ledger-lookup.ts): the
 * questions of jobs starting together go to Postgres as one query, the answers are right, and
 * while Postgres is unreachable the questions wait and are answered once it is back (no attempt
 * is spent on an outage).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { migrate } from '../../src/index.js';
import { Store, type Queryable } from '../../src/db/store.js';
import { CompletedLookup, LookupClosedError } from '../../src/consume/ledger-lookup.js';
import { silentLogger } from '../../src/log.js';
import { freePort } from '../support/servers.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { sleep } from '../support/wait.js';

let t: TestEnv;
let store: Store;

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
  store = new Store(t.schema);
  // Consumer 'c' completed 1..100 (even ids) and failed 101; consumer 'd' completed 1.
  await store.recordOutcomes(t.pool, [
    ...Array.from({ length: 50 }, (_, i) => ({
      consumerId: 'c',
      notificationId: String(2 * (i + 1)),
      status: 'completed' as const,
      attempts: 1,
      lastError: null,
    })),
    { consumerId: 'c', notificationId: '101', status: 'failed', attempts: 5, lastError: 'x' },
    { consumerId: 'd', notificationId: '1', status: 'completed', attempts: 1, lastError: null },
  ]);
});

afterAll(async () => {
  await t.cleanup();
});

/** The real pool, counting the queries sent through it, whose target can be switched. */
function countingDb(target: { db: Queryable }): { db: Queryable; queries: () => number } {
  let queries = 0;
  const db = {
    query: (...args: unknown[]) => {
      queries++;
      return (target.db.query as (...a: unknown[]) => Promise<unknown>)(...args);
    },
  } as unknown as Queryable;
  return { db, queries: () => queries };
}

describe('CompletedLookup', () => {
  it('answers the questions of one tick with one query per consumer', async () => {
    const counted = countingDb({ db: t.pool });
    const lookup = new CompletedLookup(store, counted.db, silentLogger());
    const ids = Array.from({ length: 101 }, (_, i) => String(i + 1));
    const [answers, dAnswer] = await Promise.all([
      Promise.all(ids.map((id) => lookup.isCompleted('c', id))),
      lookup.isCompleted('d', '1'),
    ]);
    expect(counted.queries()).toBe(2);
    expect(answers.map((done, i) => (done ? i + 1 : 0)).filter(Boolean)).toEqual(
      Array.from({ length: 50 }, (_, i) => 2 * (i + 1)),
    );
    expect(answers[100]).toBe(false); // failed is not completed
    expect(dAnswer).toBe(true);
    lookup.close();
  });

  it('coalesces the questions asked while a query is in flight into the next one', async () => {
    const counted = countingDb({ db: t.pool });
    const lookup = new CompletedLookup(store, counted.db, silentLogger());
    const asked: Promise<boolean>[] = [];
    // One job starting every ~0.2 ms for 40 ms: far fewer queries than questions.
    for (let i = 0; i < 200; i++) {
      asked.push(lookup.isCompleted('c', String((i % 100) + 1)));
      if (i % 5 === 0) await sleep(1);
    }
    const answers = await Promise.all(asked);
    expect(answers.filter(Boolean)).toHaveLength(100);
    expect(counted.queries()).toBeLessThan(60);
    expect(counted.queries()).toBeGreaterThan(0);
    lookup.close();
  });

  it('keeps the questions waiting while Postgres is unreachable, then answers them', async () => {
    const down = new pg.Pool({
      connectionString: `postgres://postgres@127.0.0.1:${await freePort()}/postgres`,
      connectionTimeoutMillis: 500,
    });
    down.on('error', () => {});
    const target: { db: Queryable } = { db: down };
    const counted = countingDb(target);
    const lookup = new CompletedLookup(store, counted.db, silentLogger(), { min: 50, max: 100 });
    let answered = false;
    const answer = lookup.isCompleted('c', '2').then((done) => {
      answered = true;
      return done;
    });
    await sleep(600);
    expect(answered).toBe(false);
    expect(counted.queries()).toBeGreaterThan(1); // retried
    target.db = t.pool;
    expect(await answer).toBe(true);
    lookup.close();
    await down.end();
  });

  it('refuses a malformed id alone and rejects what still waits on close', async () => {
    const lookup = new CompletedLookup(store, t.pool, silentLogger());
    await expect(lookup.isCompleted('c', '12; DROP')).rejects.toThrow(/not a notification id/);
    const pending = lookup.isCompleted('c', '2');
    lookup.close();
    await expect(pending).rejects.toBeInstanceOf(LookupClosedError);
    await expect(lookup.isCompleted('c', '2')).rejects.toBeInstanceOf(LookupClosedError);
  });
});
