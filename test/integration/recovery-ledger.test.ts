/**
 * Issue 3, delivery ledger: outcomes are written in batches; one outcome Postgres refuses (bad
 * data) must not block the others forever, and an error message with NUL characters is stored.
 */
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrate } from '../../src/index.js';
import { Store } from '../../src/db/store.js';
import { LedgerWriter } from '../../src/consume/ledger.js';
import { createLogger } from '../../src/log.js';
import { createTestEnv, type TestEnv } from '../support/env.js';

let t: TestEnv;

beforeAll(async () => {
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
});

afterAll(async () => {
  await t.cleanup();
});

describe('LedgerWriter', () => {
  it('drops only the outcome Postgres refuses, and strips NUL from errors', async () => {
    const logged: string[] = [];
    const log = createLogger({
      level: 'error',
      destination: new Writable({
        write(chunk: Buffer, _encoding, done) {
          logged.push(chunk.toString());
          done();
        },
      }),
    });
    const ledger = new LedgerWriter(new Store(t.schema), t.pool, log, 10_000, 1000);
    ledger.record({
      consumerId: 'c',
      notificationId: '1',
      status: 'completed',
      attempts: 1,
      lastError: null,
    });
    // Not a bigint: Postgres refuses the whole statement (22P02).
    ledger.record({
      consumerId: 'c',
      notificationId: 'not-a-number',
      status: 'completed',
      attempts: 1,
      lastError: null,
    });
    ledger.record({
      consumerId: 'c',
      notificationId: '2',
      status: 'failed',
      attempts: 3,
      lastError: 'bad\u0000byte',
    });
    await ledger.flush();
    ledger.close();
    expect(ledger.size).toBe(0);
    const { rows } = await t.pool.query(
      `SELECT notification_id::text AS id, status, attempts, last_error
         FROM "${t.schema}".deliveries ORDER BY notification_id`,
    );
    expect(rows).toEqual([
      { id: '1', status: 'completed', attempts: 1, last_error: null },
      { id: '2', status: 'failed', attempts: 3, last_error: 'badbyte' },
    ]);
    expect(logged.join('')).toMatch(/the delivery ledger refused an outcome; dropped it/);
  });

  it('never lets a failure replace a completion or a skip; a completion replaces a failure', async () => {
    const store = new Store(t.schema);
    const outcome = (id: string, status: 'completed' | 'failed') => ({
      consumerId: 'order',
      notificationId: id,
      status,
      attempts: 1,
      lastError: status === 'failed' ? 'boom' : null,
    });
    await t.pool.query(
      `INSERT INTO "${t.schema}".deliveries (consumer_id, notification_id, status, attempts)
       VALUES ('order', 12, 'skipped', 5)`,
    );
    await store.recordOutcomes(t.pool, [outcome('10', 'completed'), outcome('11', 'failed')]);
    // A twin run (a duplicate job) that failed after the other completed, and the reverse.
    await store.recordOutcomes(t.pool, [
      outcome('10', 'failed'),
      outcome('11', 'completed'),
      outcome('12', 'failed'),
    ]);
    const { rows } = await t.pool.query(
      `SELECT notification_id::text AS id, status FROM "${t.schema}".deliveries
        WHERE consumer_id = 'order' ORDER BY notification_id`,
    );
    expect(rows).toEqual([
      { id: '10', status: 'completed' },
      { id: '11', status: 'completed' },
      { id: '12', status: 'skipped' },
    ]);
  });
});
