/**
 * What tracing costs (docs/tracing.md, "Cost").
 *
 * 1. SQL `notify(channel, payload)` server time per call, as bench/ingest.ts measures it (one
 *    statement of N calls in a rolled-back transaction, the wake-up lease live): the current body
 *    (0010: reads the two trace settings) against the 0006 body it replaced, interleaved; and the
 *    current body with `pgq_bridge.traceparent` set (a traced SQL writer).
 * 2. The TypeScript `notify()` per call (one round trip each, sequential, one pooled client), in
 *    child processes: `@opentelemetry/api` hidden (not installed), installed without an SDK, and
 *    with sdk-trace-node registered and every call inside an active span.
 *
 * The drain with and without the API is bench/drain.ts run twice, once under
 * `--import ./test/support/otel/hide-api.mjs` (docs/tracing.md gives the commands).
 *
 * Run: `npm run build && node --import tsx bench/tracing.ts [--calls N] [--rounds N]`.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { migrate, notify } from 'pgq-bridge';
import {
  benchPool,
  dropSchemas,
  isMain,
  median,
  printTable,
  ROOT_DIR,
  round,
  wallMs,
} from './lib/common.js';

const run = promisify(execFile);
const SCHEMA = 'pgqbench_tracing';

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

/** The 0006 body of notify/2, renamed: the "before" of migration 0010. */
function notify0006Sql(): string {
  const text = readFileSync(join(ROOT_DIR, 'src/db/migrations/0006_cheaper_notify.sql'), 'utf8');
  const body = text.slice(text.indexOf('CREATE OR REPLACE FUNCTION @schema@.notify('));
  return body
    .replace('@schema@.notify(', '@schema@.notify_0006(')
    .replaceAll('@schema_literal@', `'${SCHEMA}'`)
    .replaceAll('@schema@', SCHEMA);
}

async function sqlPerCall(calls: number, rounds: number): Promise<Record<string, number>> {
  const db = benchPool(2);
  try {
    await dropSchemas(db, SCHEMA);
    await migrate({ db, schema: SCHEMA });
    await db.query(notify0006Sql());
    const variants: Record<string, { fn: string; traced: boolean }> = {
      'notify/2 of 0006 (before)': { fn: 'notify_0006', traced: false },
      'notify/2 of 0010 (after), no trace set': { fn: 'notify', traced: false },
      'notify/2 of 0010, traceparent set': { fn: 'notify', traced: true },
    };
    const samples = new Map<string, number[]>();
    const client = await db.connect();
    try {
      for (let r = 0; r < rounds + 1; r++) {
        for (const [name, v] of Object.entries(variants)) {
          await client.query('BEGIN');
          await client.query(`UPDATE ${SCHEMA}.listener_lease SET awake_until = 'infinity'`);
          if (v.traced) {
            await client.query(
              `SET LOCAL pgq_bridge.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'`,
            );
          }
          const start = wallMs();
          await client.query(
            `SELECT count(${SCHEMA}.${v.fn}('orders', '{"amount": 1}')) FROM generate_series(1, $1)`,
            [calls],
          );
          // The first round also compiles the functions: not counted.
          if (r > 0)
            samples.set(name, [...(samples.get(name) ?? []), ((wallMs() - start) * 1000) / calls]);
          await client.query('ROLLBACK');
        }
      }
    } finally {
      client.release();
    }
    return Object.fromEntries([...samples].map(([k, v]) => [k, round(median(v), 2)]));
  } finally {
    await dropSchemas(db, SCHEMA).catch(() => undefined);
    await db.end();
  }
}

/** In a child: `calls` sequential notify() calls; prints µs per call. */
async function tsChild(calls: number, spans: boolean): Promise<void> {
  const db = benchPool(1);
  const client = await db.connect();
  try {
    const api = spans ? await import('@opentelemetry/api') : undefined;
    const tracer = api?.trace.getTracer('bench');
    const once = (): Promise<string> =>
      tracer
        ? tracer.startActiveSpan('request', (span) =>
            notify(client, 'orders', { amount: 1 }, { schema: SCHEMA }).finally(() => span.end()),
          )
        : notify(client, 'orders', { amount: 1 }, { schema: SCHEMA });
    for (let i = 0; i < 200; i++) await once(); // warm-up (and the one-time import)
    const start = wallMs();
    for (let i = 0; i < calls; i++) await once();
    process.stdout.write(`${((wallMs() - start) * 1000) / calls}\n`);
  } finally {
    client.release();
    await db.end();
  }
}

async function tsPerCall(calls: number, rounds: number): Promise<Record<string, number>> {
  const db = benchPool(1);
  await dropSchemas(db, SCHEMA);
  await migrate({ db, schema: SCHEMA });
  const otel = join(ROOT_DIR, 'test/support/otel');
  const variants: Record<string, string[]> = {
    'API not installed': ['--import', join(otel, 'hide-api.mjs')],
    'API installed, no SDK': [],
    'SDK registered, call inside a span': ['--import', join(otel, 'register-noop-sdk.mjs')],
  };
  const samples = new Map<string, number[]>();
  try {
    for (let r = 0; r < rounds; r++) {
      for (const [name, args] of Object.entries(variants)) {
        const spans = name.startsWith('SDK');
        const { stdout } = await run(
          process.execPath,
          [
            ...args,
            '--import',
            'tsx',
            join(ROOT_DIR, 'bench/tracing.ts'),
            '--child',
            String(calls),
            ...(spans ? ['--spans'] : []),
          ],
          { cwd: ROOT_DIR, env: process.env },
        );
        samples.set(name, [...(samples.get(name) ?? []), Number(stdout.trim())]);
        await db.query(`TRUNCATE ${SCHEMA}.notifications`);
      }
    }
  } finally {
    await dropSchemas(db, SCHEMA).catch(() => undefined);
    await db.end();
  }
  return Object.fromEntries([...samples].map(([k, v]) => [k, round(median(v), 1)]));
}

async function main(): Promise<void> {
  const child = process.argv.indexOf('--child');
  if (child >= 0) {
    await tsChild(Number(process.argv[child + 1]), process.argv.includes('--spans'));
    return;
  }
  const rounds = flag('rounds', 3);
  const sql = await sqlPerCall(flag('sql-calls', 20_000), rounds);
  printTable(
    'SQL notify() server time per call, µs (median of rounds; lease live)',
    Object.entries(sql).map(([variant, us]) => ({ variant, 'µs/call': us })),
  );
  const ts = await tsPerCall(flag('calls', 2000), rounds);
  printTable(
    'TypeScript notify() per call, µs (one round trip each; median of rounds)',
    Object.entries(ts).map(([variant, us]) => ({ variant, 'µs/call': us })),
  );
}

if (isMain(import.meta.url)) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
