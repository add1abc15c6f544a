/**
 * The claim keeps its cost flat as the table grows: on a table of 300,000 bridged rows (and a few
 * unbridged ones), EXPLAIN of the claim exactly as the bridge sends it (every variant: all
 * channels, some channels, `--since`, a `--skip-playback` boundary before and after it settles)
 * reads the partial index of unbridged rows, never a sequential scan of notifications and never a
 * hash join (the join form of the claim turned every batch into a walk of the whole table).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BridgeStore, type ClaimSpec } from '../../src/db/bridge-sql.js';
import { runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';

let t: TestEnv;

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  'Index Name'?: string;
  Plans?: PlanNode[];
}

function nodes(plan: PlanNode): PlanNode[] {
  return [plan, ...(plan.Plans ?? []).flatMap(nodes)];
}

async function explain(spec: ClaimSpec): Promise<PlanNode[]> {
  const sql = new BridgeStore(t.schema).claimSql(spec);
  const client = await t.pool.connect();
  try {
    await client.query('BEGIN');
    const res = await client.query<{ 'QUERY PLAN': { Plan: PlanNode }[] }>(
      `EXPLAIN (FORMAT JSON) ${sql}`,
    );
    return nodes(res.rows[0]['QUERY PLAN'][0].Plan);
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
}

beforeAll(async () => {
  t = createTestEnv();
  const migrated = await runCli(['migrate'], { env: t.env });
  expect(migrated.code, migrated.stderr).toBe(0);
  const s = `"${t.schema}"`;
  await t.pool.query(
    `INSERT INTO ${s}.notifications (channel, payload, bridged_at)
     SELECT CASE WHEN i % 3 = 0 THEN 'orders' ELSE 'users' END, jsonb_build_object('i', i), now()
       FROM generate_series(1, 300000) AS i`,
  );
  await t.pool.query(
    `INSERT INTO ${s}.notifications (channel, payload)
     SELECT 'orders', jsonb_build_object('i', i) FROM generate_series(1, 200) AS i`,
  );
  await t.pool.query(`ANALYZE ${s}.notifications`);
}, 120_000);

afterAll(async () => {
  await t?.cleanup();
});

describe('the claim statement', () => {
  const rows = 500;
  const variants: Record<string, () => Promise<ClaimSpec>> = {
    'all channels': async () => ({ limit: rows, channels: null, since: null, after: null }),
    'some channels': async () => ({ limit: rows, channels: ['orders'], since: null, after: null }),
    '--since': async () => ({
      limit: rows,
      channels: null,
      since: new Date(Date.now() - 3600_000),
      after: null,
    }),
    'a --skip-playback boundary': async () => ({
      limit: rows,
      channels: null,
      since: null,
      after: await new BridgeStore(t.schema).boundary(t.pool),
    }),
    'a settled boundary': async () => {
      const { maxId } = await new BridgeStore(t.schema).boundary(t.pool);
      return { limit: rows, channels: null, since: null, after: { maxId, snapshot: null } };
    },
  };

  for (const [name, spec] of Object.entries(variants)) {
    it(`reads the partial index, with no hash join or sequential scan (${name})`, async () => {
      const plan = await explain(await spec());
      const types = plan.map((n) => n['Node Type']);
      expect(types).not.toContain('Hash Join');
      expect(types).not.toContain('Merge Join');
      expect(plan.filter((n) => n['Node Type'] === 'Seq Scan')).toEqual([]);
      expect(
        plan.some(
          (n) =>
            /^notifications_unbridged(_channel)?_idx$/.test(n['Index Name'] ?? '') &&
            n['Node Type'].includes('Index'),
        ),
        JSON.stringify(plan.map((n) => [n['Node Type'], n['Index Name'] ?? n['Relation Name']])),
      ).toBe(true);
    });
  }
});
