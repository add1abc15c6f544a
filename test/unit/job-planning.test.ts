import { describe, expect, it } from 'vitest';
import { jobDataFor, jobIdFor, planJobs } from '../../src/bridge/plan.js';
import type { NotificationRow, SubscriptionRow } from '../../src/db/store.js';

function row(id: string, channel: string, payload = '{}'): NotificationRow {
  return {
    id,
    channel,
    payload,
    context: null,
    created_at: new Date('2026-01-02T03:04:05.678Z'),
  };
}

function sub(consumer: string, channel: string, jobOptions = {}): SubscriptionRow {
  return { consumer_id: consumer, channel, after_id: '0', job_options: jobOptions, batch: null };
}

describe('jobIdFor', () => {
  it('derives a stable id that BullMQ accepts (not integer-like, no colon)', () => {
    expect(jobIdFor('42')).toBe('n42');
    expect(jobIdFor('42')).toBe(jobIdFor('42'));
    expect(jobIdFor('9223372036854775807')).toBe('n9223372036854775807');
    for (const id of ['1', '42', '9223372036854775807']) {
      const jobId = jobIdFor(id);
      expect(jobId).not.toMatch(/^\d+$/);
      expect(jobId).not.toContain(':');
    }
    expect(jobIdFor('1')).not.toBe(jobIdFor('10'));
  });
});

describe('jobDataFor', () => {
  it('keeps payload and context as JSON text and the time as ISO', () => {
    const r = { ...row('7', 'orders', '{"b": 2, "a": 1}'), context: '{"user": "u1"}' };
    expect(jobDataFor(r)).toEqual({
      id: '7',
      channel: 'orders',
      payload: '{"b": 2, "a": 1}',
      context: '{"user": "u1"}',
      createdAt: '2026-01-02T03:04:05.678Z',
    });
    expect(jobDataFor(r)).not.toHaveProperty('replay');
    expect(jobDataFor(r, true).replay).toBe(true);
  });

  it('carries the ordering key of keyed rows only', () => {
    expect(jobDataFor({ ...row('8', 'orders'), key: 'public.users:7' }).key).toBe('public.users:7');
    expect(jobDataFor({ ...row('9', 'orders'), key: null })).not.toHaveProperty('key');
    expect(jobDataFor(row('10', 'orders'))).not.toHaveProperty('key');
  });
});

describe('planJobs', () => {
  const rows = [row('1', 'orders'), row('2', 'users'), row('3', 'orders'), row('4', 'nobody')];

  it('fans every row out to every subscriber of its channel, in id order', () => {
    const subs = [
      sub('audit', 'orders'),
      sub('audit', 'users'),
      sub('mailer', 'users'),
      sub('billing', 'orders'),
    ];
    const plan = planJobs(rows, subs).jobs;
    const ids = (consumer: string) => plan.get(consumer)?.map((j) => j.opts.jobId);
    expect(ids('audit')).toEqual(['n1', 'n2', 'n3']);
    expect(ids('mailer')).toEqual(['n2']);
    expect(ids('billing')).toEqual(['n1', 'n3']);
    expect([...plan.keys()].sort()).toEqual(['audit', 'billing', 'mailer']);
    // Row 4 has no subscriber: no job anywhere.
    for (const jobs of plan.values()) expect(jobs.some((j) => j.data.id === '4')).toBe(false);
  });

  it("applies each consumer's job options and names jobs after the channel", () => {
    const plan = planJobs(
      [row('5', 'orders')],
      [
        sub('a', 'orders', { attempts: 3, backoff: { type: 'fixed', delay: 10 } }),
        sub('b', 'orders', { attempts: 1, jobId: 'must-be-overridden' }),
      ],
    ).jobs;
    const [a] = plan.get('a')!;
    const [b] = plan.get('b')!;
    expect(a.name).toBe('orders');
    expect(a.opts).toEqual({ attempts: 3, backoff: { type: 'fixed', delay: 10 }, jobId: 'n5' });
    expect(b.opts).toEqual({ attempts: 1, jobId: 'n5' });
    expect(a.data).toEqual(jobDataFor(row('5', 'orders')));
  });

  it('returns an empty plan without subscriptions or rows', () => {
    expect(planJobs(rows, []).jobs.size).toBe(0);
    expect(planJobs([], [sub('a', 'orders')]).jobs.size).toBe(0);
  });

  it('marks replayed jobs', () => {
    const plan = planJobs([row('1', 'orders')], [sub('a', 'orders')], { replay: true }).jobs;
    expect(plan.get('a')![0].data.replay).toBe(true);
  });
});

describe('payloads by reference', () => {
  it('leaves a payload over the limit in the row and marks the job data', () => {
    const big = JSON.stringify({ text: 'x'.repeat(2000) });
    const data = jobDataFor(row('9', 'files', big), false, 1024);
    expect(data).toEqual({
      id: '9',
      channel: 'files',
      context: null,
      createdAt: '2026-01-02T03:04:05.678Z',
      payloadRef: true,
    });
    // At the limit it stays inline; the limit counts UTF-8 bytes, not characters.
    expect(jobDataFor(row('9', 'files', big), false, big.length).payload).toBe(big);
    const wide = JSON.stringify('é'.repeat(400)); // 402 characters, 802 bytes
    expect(jobDataFor(row('9', 'files', wide), false, 801).payloadRef).toBe(true);
    expect(jobDataFor(row('9', 'files', wide), false, 802).payload).toBe(wide);
    // No limit given: always inline, as before.
    expect(jobDataFor(row('9', 'files', big)).payload).toBe(big);
  });

  it('shares one reference among every consumer of the row', () => {
    const big = JSON.stringify({ text: 'y'.repeat(5000) });
    const plan = planJobs([row('5', 'c', big)], [sub('a', 'c'), sub('b', 'c')], {
      inlinePayloadLimit: 4096,
    }).jobs;
    for (const consumer of ['a', 'b']) {
      const [job] = plan.get(consumer) ?? [];
      expect(job.data.payloadRef).toBe(true);
      expect(job.data.payload).toBeUndefined();
      expect(JSON.stringify(job.data).length).toBeLessThan(200);
    }
  });
});
