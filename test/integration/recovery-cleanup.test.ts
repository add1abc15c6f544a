/**
 * Issue 3: `cleanup --days N` deletes old bridged notifications whose deliveries are all
 * completed, with their ledger rows, in small batches; `--dry-run` deletes nothing and reports the
 * count that `cleanup` then deletes; unfinished rows (a failed or pending delivery) stay unless
 * `--force`; unbridged rows always stay.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';

let t: TestEnv;

async function cleanupJson(args: string[]): Promise<Record<string, unknown>> {
  const result = await runCli(['cleanup', ...args, '--json'], { env: t.env });
  expect(result.code, result.stderr + result.stdout).toBe(0);
  return JSON.parse(result.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

/** Remaining notifications per group (payload->>'g') and ledger rows. */
async function remaining(): Promise<{ groups: Record<string, number>; ledger: number }> {
  const { rows } = await t.pool.query<{ g: string; n: number }>(
    `SELECT payload->>'g' AS g, count(*)::int AS n FROM "${t.schema}".notifications
      GROUP BY 1 ORDER BY 1`,
  );
  const { rows: ledger } = await t.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM "${t.schema}".deliveries`,
  );
  return { groups: Object.fromEntries(rows.map((r) => [r.g, r.n])), ledger: ledger[0].n };
}

beforeAll(async () => {
  t = createTestEnv();
  const migrated = await runCli(['migrate'], { env: t.env });
  expect(migrated.code, migrated.stderr).toBe(0);
  const s = `"${t.schema}"`;
  await t.pool.query(`
    INSERT INTO ${s}.consumers (id) VALUES ('a'), ('b');
    INSERT INTO ${s}.subscriptions (consumer_id, channel, after_id) VALUES ('a', 'x', 0), ('b', 'x', 0);
    -- groups: done (all completed), failed (b failed), pending (b no outcome), unbridged,
    -- nobody (channel without subscribers), young (completed but recent)
    SELECT ${s}.notify('x', jsonb_build_object('g', 'done')) FROM generate_series(1, 40);
    SELECT ${s}.notify('x', jsonb_build_object('g', 'failed')) FROM generate_series(1, 10);
    SELECT ${s}.notify('x', jsonb_build_object('g', 'pending')) FROM generate_series(1, 10);
    SELECT ${s}.notify('x', jsonb_build_object('g', 'unbridged')) FROM generate_series(1, 5);
    SELECT ${s}.notify('y', jsonb_build_object('g', 'nobody')) FROM generate_series(1, 15);
    UPDATE ${s}.notifications SET created_at = now() - interval '10 days',
      bridged_at = CASE WHEN payload->>'g' = 'unbridged' THEN NULL
                        ELSE now() - interval '10 days' END;
    SELECT ${s}.notify('x', jsonb_build_object('g', 'young')) FROM generate_series(1, 10);
    UPDATE ${s}.notifications SET bridged_at = now() WHERE payload->>'g' = 'young';
    -- A consumer that registered later ('now'): the old rows are not owed to it.
    INSERT INTO ${s}.consumers (id) VALUES ('c');
    INSERT INTO ${s}.subscriptions (consumer_id, channel, after_id)
      SELECT 'c', 'x', max(id) FROM ${s}.notifications WHERE payload->>'g' <> 'young';
    INSERT INTO ${s}.deliveries (consumer_id, notification_id, status, attempts, last_error)
      SELECT c, n.id,
             CASE WHEN c = 'b' AND n.payload->>'g' = 'failed' THEN 'failed' ELSE 'completed' END,
             1, NULL
        FROM ${s}.notifications n, unnest(ARRAY['a', 'b']) c
       WHERE n.payload->>'g' IN ('done', 'failed', 'young')
          OR (n.payload->>'g' = 'pending' AND c = 'a');
  `);
});

afterAll(async () => {
  await t.cleanup();
});

describe('cleanup', () => {
  it('--dry-run deletes nothing and reports what cleanup then deletes', async () => {
    const before = await remaining();
    expect(before).toEqual({
      groups: { done: 40, failed: 10, nobody: 15, pending: 10, unbridged: 5, young: 10 },
      ledger: 80 + 20 + 10 + 20,
    });
    const dry = await cleanupJson(['--days', '7', '--dry-run', '--batch-size', '7']);
    expect(dry).toMatchObject({
      dryRun: true,
      scanned: 75,
      deleted: 55,
      ledgerRowsDeleted: 80,
      kept: 20,
    });
    expect(await remaining()).toEqual(before);

    const real = await cleanupJson(['--days', '7', '--batch-size', '7']);
    expect(real).toMatchObject({
      dryRun: false,
      scanned: 75,
      deleted: dry.deleted,
      ledgerRowsDeleted: dry.ledgerRowsDeleted,
      kept: 20,
    });
    expect(await remaining()).toEqual({
      groups: { failed: 10, pending: 10, unbridged: 5, young: 10 },
      ledger: 20 + 10 + 20,
    });

    // Nothing left to do: a second run deletes nothing.
    expect(await cleanupJson(['--days', '7'])).toMatchObject({ deleted: 0, kept: 20 });
  });

  it('--force also deletes unfinished old rows, never unbridged ones', async () => {
    const dry = await cleanupJson(['--days', '7', '--force', '--dry-run']);
    expect(dry).toMatchObject({ deleted: 20, ledgerRowsDeleted: 30, kept: 0 });
    const real = await cleanupJson(['--days', '7', '--force']);
    expect(real).toMatchObject({ deleted: 20, ledgerRowsDeleted: 30, kept: 0 });
    expect(await remaining()).toEqual({ groups: { unbridged: 5, young: 10 }, ledger: 20 });
  });

  it('prints a human summary and refuses bad input', async () => {
    const text = await runCli(['cleanup', '--days', '0.5', '--dry-run'], { env: t.env });
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(
      /^cleanup \(dry run, nothing deleted\): would delete 0 notifications and 0 ledger rows created before \S+ \(0\.5 days\); kept 0 unfinished/m,
    );
    const missing = await runCli(['cleanup'], { env: t.env });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--days/);
    const negative = await runCli(['cleanup', '--days', '-1'], { env: t.env });
    expect(negative.code).toBe(2);
  });
});
