/**
 * Found by the soak (test/soak, batcher: ordered + batch + handleBatch): after a Postgres restart,
 * the ledger lookups of the jobs waiting for it resumed together, and two jobs of one process
 * that held the same notification (the listener's batch was rolled back after addBulk and the
 * rows were packed again differently) both ran it, at the same time. Their gate checks were
 * answered by one batched lookup, so both continuations ran in the same tick, each before the
 * other had marked the key held.
 */
import type { Job, Queue } from 'bullmq';
import { describe, expect, it } from 'vitest';
import { KeyGate } from '../../src/consume/ordering.js';
import type { NotificationJobData } from '../../src/consume/notification.js';
import type { OrderingSql, Predecessor } from '../../src/db/ordering.js';
import type { Queryable } from '../../src/db/store.js';
import { silentLogger } from '../../src/log.js';

/** A stand-in for the SQL: every delivery is the first owed of its key (nothing before it). */
const sql = {
  predecessors: (_db: Queryable, _c: string, items: readonly { id: string }[]) =>
    Promise.resolve(
      new Map<string, Predecessor>(items.map((i) => [i.id, { id: null, status: null }])),
    ),
  successors: () => Promise.resolve(new Map<string, string>()),
} as unknown as OrderingSql;

function fakeJob(id: string): Job {
  return {
    id,
    token: 'token',
    attemptsStarted: 1,
    attemptsMade: 0,
    moveToDelayed: () => Promise.resolve(),
    promote: () => Promise.resolve(),
  } as unknown as Job;
}

function entry(id: string, key: string): NotificationJobData {
  return { id, channel: 'accounts', payload: '{}', context: null, createdAt: '', key };
}

describe('ordering gate of jobs with several notifications', () => {
  it('lets only one of two jobs answered in the same tick hold a key', async () => {
    const gate = new KeyGate('batcher', 'block', {
      sql,
      db: {} as Queryable,
      log: silentLogger(),
      queue: () => ({}) as Queue,
      packs: true,
    });
    // Two packs holding notification 7 of key k (asked in the same tick: one batched lookup).
    const outcomes = await Promise.allSettled([
      gate.admitPack(fakeJob('b1-9-x'), 'token', [entry('7', 'k'), entry('9', 'other')]),
      gate.admitPack(fakeJob('b7-8-y'), 'token', [entry('7', 'k'), entry('8', 'third')]),
    ]);
    const withK = outcomes.filter(
      (o) => o.status === 'fulfilled' && o.value.ready.some((e) => e.key === 'k'),
    );
    expect(withK).toHaveLength(1);
    // The other job runs what is free and leaves key k for later.
    const other = outcomes.find((o) => o !== withK[0]);
    expect(other?.status === 'rejected' ? other.reason : undefined).toBeUndefined();
    if (other?.status === 'fulfilled') {
      expect(other.value.waiting.map((e) => e.id)).toEqual(['7']);
    }
  });
});
