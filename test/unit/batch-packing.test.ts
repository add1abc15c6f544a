import { describe, expect, it } from 'vitest';
import { batchJobIdFor, packBatches } from '../../src/bridge/pack.js';
import { claimLimitFor, planJobs } from '../../src/bridge/plan.js';
import type { NotificationRow, SubscriptionRow } from '../../src/db/store.js';
import type { BatchJobData } from '../../src/consume/notification.js';

function rows(from: number, to: number, channel = 'orders'): NotificationRow[] {
  const out: NotificationRow[] = [];
  for (let id = from; id <= to; id++) {
    out.push({
      id: String(id),
      channel,
      payload: `{"i":${id}}`,
      context: null,
      created_at: new Date(0),
    });
  }
  return out;
}

function sub(consumer: string, batch: SubscriptionRow['batch'] = null): SubscriptionRow {
  return {
    consumer_id: consumer,
    channel: 'orders',
    after_id: '0',
    job_options: { attempts: 3 },
    batch,
  };
}

describe('batchJobIdFor', () => {
  it('names the first and last id and changes with the composition', () => {
    const id = batchJobIdFor(['1', '2', '4']);
    expect(id).toMatch(/^b1-4-[0-9a-f]{16}$/);
    expect(id).not.toContain(':');
    expect(batchJobIdFor(['1', '2', '4'])).toBe(id);
    // Same first, last and count, another row in between: another job, never a silent no-op.
    expect(batchJobIdFor(['1', '3', '4'])).not.toBe(id);
    expect(batchJobIdFor(['1', '2', '3', '4'])).not.toBe(id);
  });
});

describe('packBatches', () => {
  it('packs a batch consumer in id order and leaves the others one job per notification', () => {
    const subs = [sub('index', { size: 4, maxWaitMs: 0 }), sub('mail')];
    const plan = packBatches(planJobs(rows(1, 10), subs).jobs, subs);
    expect(plan.get('mail')!.map((j) => j.opts.jobId)).toEqual(rows(1, 10).map((r) => `n${r.id}`));
    const index = plan.get('index')!;
    expect(index.map((j) => (j.data as BatchJobData).batch.map((e) => e.id))).toEqual([
      ['1', '2', '3', '4'],
      ['5', '6', '7', '8'],
      ['9', '10'],
    ]);
    expect(index[0].opts).toMatchObject({
      attempts: 3,
      jobId: batchJobIdFor(['1', '2', '3', '4']),
    });
  });

  it('keeps a group of one as the notification job (exact dedupe)', () => {
    const subs = [sub('index', { size: 4, maxWaitMs: 0 })];
    expect(
      packBatches(planJobs(rows(1, 5), subs).jobs, subs)
        .get('index')!
        .at(-1)!.opts.jobId,
    ).toBe('n5');
    expect(packBatches(planJobs(rows(7, 7), subs).jobs, subs).get('index')![0].opts.jobId).toBe(
      'n7',
    );
  });
});

describe('claimLimitFor', () => {
  it('raises the claim to the largest batch size, within bounds', () => {
    expect(claimLimitFor(500, [sub('a')])).toBe(500);
    expect(claimLimitFor(500, [sub('a', { size: 100, maxWaitMs: 0 })])).toBe(500);
    expect(claimLimitFor(500, [sub('a', { size: 2000, maxWaitMs: 0 })])).toBe(2000);
    expect(claimLimitFor(500, [sub('a', { size: 1_000_000, maxWaitMs: 0 })])).toBe(5000);
  });
});
