import { describe, expect, it } from 'vitest';
import { FIRST_WAIT_MS, MAX_WAIT_MS, waitMs, waitsOf } from '../../src/consume/waits.js';
import { deadLetterModeOf } from '../../src/consume/ordering.js';
import { finishedStatuses } from '../../src/db/ordering.js';
import { formatBlockedKeys } from '../../src/operate/blocked-keys.js';

describe('ordering: waits of a notification whose key is busy', () => {
  it('start at FIRST_WAIT_MS, double, stop at MAX_WAIT_MS, jittered by at most 25%', () => {
    const mid = (): number => 0.5;
    expect(waitMs(0, mid)).toBe(FIRST_WAIT_MS);
    expect(waitMs(1, mid)).toBe(2 * FIRST_WAIT_MS);
    expect(waitMs(50, mid)).toBe(MAX_WAIT_MS);
    expect(waitMs(0, () => 0)).toBe(0.75 * FIRST_WAIT_MS);
    expect(waitMs(0, () => 0.999999)).toBeLessThanOrEqual(1.25 * FIRST_WAIT_MS);
  });

  it('counts the waits from BullMQ starts that used no attempt', () => {
    expect(waitsOf({ attemptsStarted: 1, attemptsMade: 0 })).toBe(0);
    expect(waitsOf({ attemptsStarted: 4, attemptsMade: 0 })).toBe(3);
    expect(waitsOf({ attemptsStarted: 4, attemptsMade: 3 })).toBe(0);
    expect(waitsOf({ attemptsStarted: 0, attemptsMade: 0 })).toBe(0);
  });
});

describe('ordering: options and statuses', () => {
  it("reads ordered as null, 'block' or 'skip'", () => {
    expect(deadLetterModeOf({})).toBeNull();
    expect(deadLetterModeOf({ ordered: false })).toBeNull();
    expect(deadLetterModeOf({ ordered: true })).toBe('block');
    expect(deadLetterModeOf({ ordered: {} })).toBe('block');
    expect(deadLetterModeOf({ ordered: { onDeadLetter: 'skip' } })).toBe('skip');
  });

  it("lets a key go on after a dead letter only in 'skip' mode", () => {
    expect(finishedStatuses('block')).toEqual(['completed', 'skipped']);
    expect(finishedStatuses('skip')).toEqual(['completed', 'skipped', 'failed']);
  });

  it('status names the oldest blocked key and how to release it; nothing when none', () => {
    const lines = formatBlockedKeys([
      { id: 'idle', blockedKeys: { count: 0, oldest: null } },
      { id: 'plain', blockedKeys: null },
      {
        id: 'search',
        blockedKeys: {
          count: 2,
          oldest: {
            key: 'public.users:7',
            notificationId: '42',
            failedAt: '2026-12-01T00:00:00.000Z',
            lastError: 'boom\nstack',
          },
        },
      },
    ]);
    expect(lines).toEqual([
      'blocked keys of search: 2; oldest "public.users:7" at notification 42 (failed 2026-12-01T00:00:00.000Z: boom)',
      '  release: pgq-bridge reconcile --failed --consumers search  (retry)  or  pgq-bridge consumers skip search 42  (give it up)',
    ]);
  });
});
