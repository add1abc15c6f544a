/**
 * Helpers of the process-level ordering tests (test/integration/ordering-*.test.ts): writers
 * whose changes of one key commit in sequence, and the per-key checks.
 */
import pg from 'pg';
import { expect } from 'vitest';
import { sleep } from './wait.js';

/**
 * `writers` concurrent writers, `changes` transactions each: `write(client, i)` runs inside
 * BEGIN/COMMIT, and the transaction sometimes holds its locks a little before it commits (so
 * concurrent writers of one row or key queue behind it).
 */
export async function runWriters(
  databaseUrl: string,
  writers: number,
  changes: number,
  write: (client: pg.Client) => Promise<unknown>,
): Promise<void> {
  await Promise.all(
    Array.from({ length: writers }, async () => {
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      try {
        for (let i = 0; i < changes; i++) {
          await client.query('BEGIN');
          await write(client);
          if (Math.random() < 0.3) await sleep(Math.random() * 5);
          await client.query('COMMIT');
          await sleep(Math.random() * 8);
        }
      } finally {
        await client.end();
      }
    }),
  );
}

/** One handler run (or call) holding a key: epoch seconds; `ended` null when it was killed. */
export interface KeyRun {
  started: number;
  ended: number | null;
}

/**
 * Never two at once: in start order, each run of `key` starts after the previous finished one
 * ended. A run without an end was killed with its process.
 */
export function expectOneAtATime(key: string, runs: readonly KeyRun[]): void {
  let lastEnd = -Infinity;
  for (const [i, r] of runs.entries()) {
    expect(r.started, `${key}: run ${i} overlaps the previous one`).toBeGreaterThanOrEqual(lastEnd);
    if (r.ended !== null) lastEnd = r.ended;
  }
}

/**
 * The versions that the first successful handling of each notification saw, in the order they
 * ran (for "in order, nothing missing": 1..N).
 */
export function firstSuccessfulVersions(
  runs: readonly { notification_id: string; version: number; ok: boolean | null }[],
): number[] {
  const done = new Set<string>();
  const seen: number[] = [];
  for (const r of runs) {
    if (r.ok !== true || done.has(r.notification_id)) continue;
    done.add(r.notification_id);
    seen.push(r.version);
  }
  return seen;
}
