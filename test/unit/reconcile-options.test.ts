import { InvalidArgumentError } from 'commander';
import { describe, expect, it } from 'vitest';
import { planJobs } from '../../src/bridge/plan.js';
import { cleanupSummary } from '../../src/cli/cleanup.js';
import { reconcileSummary, sinceArgument } from '../../src/cli/reconcile.js';
import type { SubscriptionRow } from '../../src/db/store.js';
import { removedAtOnce } from '../../src/consume/ledger.js';
import type { ReconcileResult } from '../../src/recover/reconcile.js';

describe('reconcile --since', () => {
  const now = Date.parse('2026-03-10T12:00:00Z');

  it('takes an age in s, m, h or d', () => {
    expect(sinceArgument('90m', now).toISOString()).toBe('2026-03-10T10:30:00.000Z');
    expect(sinceArgument('6h', now).toISOString()).toBe('2026-03-10T06:00:00.000Z');
    expect(sinceArgument('7d', now).toISOString()).toBe('2026-03-03T12:00:00.000Z');
    expect(sinceArgument('1.5d', now).toISOString()).toBe('2026-03-09T00:00:00.000Z');
    expect(sinceArgument('30s', now).toISOString()).toBe('2026-03-10T11:59:30.000Z');
  });

  it('takes an ISO date or date-time', () => {
    expect(sinceArgument('2026-01-31T12:00:00Z').toISOString()).toBe('2026-01-31T12:00:00.000Z');
    expect(sinceArgument('2026-01-31').toISOString()).toBe('2026-01-31T00:00:00.000Z');
  });

  it('refuses anything else', () => {
    for (const bad of ['yesterday', '7', '7w', '', '2026-13-45', '-1d']) {
      expect(() => sinceArgument(bad, now), bad).toThrow(InvalidArgumentError);
    }
  });
});

describe('summaries', () => {
  const result: ReconcileResult = {
    scanned: 5000,
    enqueued: 4990,
    alreadyQueued: 7,
    alreadyDone: 3,
    bridged: 5000,
    replayed: 0,
    deadLetters: 2,
    unreplayable: 0,
    dryRun: false,
    durationMs: 1234,
  };

  it('reconcile says what it did, or would do', () => {
    expect(reconcileSummary(result)).toBe(
      'reconcile: scanned 5000, enqueued 4990, already queued 7, already done 3 ' +
        '(unbridged rows bridged 5000, failed replayed 0, dead letters left 2) in 1.2 s\n',
    );
    expect(reconcileSummary({ ...result, dryRun: true, unreplayable: 1 })).toBe(
      'reconcile (dry run, nothing changed): scanned 5000, would enqueue 4990, already queued 7, ' +
        'already done 3 (unbridged rows to bridge 5000, failed to replay 0, dead letters left 2, ' +
        'unreplayable 1) in 1.2 s\n',
    );
  });

  it('cleanup says what it deleted, or would delete', () => {
    const cutoff = new Date('2026-03-03T12:00:00Z');
    const r = { scanned: 12, deleted: 10, ledgerRowsDeleted: 20, kept: 2, cutoff, durationMs: 50 };
    expect(cleanupSummary({ ...r, dryRun: false }, 7)).toBe(
      'cleanup: deleted 10 notifications and 20 ledger rows created before ' +
        '2026-03-03T12:00:00.000Z (7 days); kept 2 unfinished in 0.1 s\n',
    );
    expect(cleanupSummary({ ...r, dryRun: true }, 7)).toMatch(
      /^cleanup \(dry run, nothing deleted\): would delete 10 notifications/,
    );
  });
});

describe('planJobs and subscription start', () => {
  const sub = (consumer: string, afterId: string): SubscriptionRow => ({
    consumer_id: consumer,
    channel: 'orders',
    after_id: afterId,
    job_options: {},
    batch: null,
  });
  const rows = ['9', '10', '11'].map((id) => ({
    id,
    channel: 'orders',
    payload: '{}',
    context: null,
    created_at: new Date(0),
  }));

  it('gives a subscription only rows after its after_id (compared as numbers)', () => {
    const plan = planJobs(rows, [sub('all', '0'), sub('late', '9')], { replay: true }).jobs;
    expect(plan.get('all')!.map((j) => j.opts.jobId)).toEqual(['n9', 'n10', 'n11']);
    expect(plan.get('late')!.map((j) => j.opts.jobId)).toEqual(['n10', 'n11']);
    expect(plan.get('late')![0].data.replay).toBe(true);
  });
});

describe('removedAtOnce: which finished jobs need their outcome in the ledger first', () => {
  it('is true only for settings under which BullMQ removes the job as it finishes', () => {
    for (const keep of [true, 0, { count: 0 }, { age: 0 }, { age: 3600, count: 0 }]) {
      expect(removedAtOnce(keep), JSON.stringify(keep)).toBe(true);
    }
    for (const keep of [
      undefined,
      false,
      1,
      10_000,
      { count: 1 },
      { age: 86_400, count: 10_000 },
    ]) {
      expect(removedAtOnce(keep), JSON.stringify(keep)).toBe(false);
    }
  });
});
