/**
 * Tracing (SPEC "Tracing", docs/tracing.md) with a real OpenTelemetry SDK on both sides: this
 * test process (writers, the listener) registers sdk-trace-node with an in-memory exporter; the
 * `work` process is started as a user would, `node --import <register file>`, and writes its spans
 * to a file. One trace must run from the writer's span to the handler's own spans:
 *
 * - a TypeScript writer inside a span (with a tracestate), retried once: two CONSUMER spans
 *   `<consumer> process`, children of the writer, attempt 1 with the error recorded;
 * - a SQL writer with `SET LOCAL pgq_bridge.traceparent/tracestate`, via notify() and a trigger;
 * - withContext() inside a span, for a trigger payload;
 * - a batch consumer: one span per handler call, linked to every notification's writer;
 * - the listener's batch: a PRODUCER span linked to the rows it carried.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  context,
  createTraceState,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
} from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createListener, migrate, notify, withContext, type Listener } from '../../src/index.js';
import { CLI_BIN, REPO_ROOT, startNode, type CliHandle } from '../support/cli.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { removeOpsConsumers, writeOpsConsumers } from '../support/ops.js';
import { waitFor } from '../support/wait.js';

const REGISTER = join(REPO_ROOT, 'test/support/otel/register-file-exporter.mjs');

interface SpanJson {
  name: string;
  kind: number;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  parentTraceState?: string;
  attributes: Record<string, unknown>;
  links: { traceId: string; spanId: string }[];
  status: { code: number; message?: string };
  events: { name: string; attributes?: Record<string, unknown> }[];
}

const CONSUMERS = `
import { trace } from '@opentelemetry/api';
const app = trace.getTracer('app');
export default [
  {
    id: 'tr-one',
    channels: ['orders', 'things'],
    attempts: 2,
    backoff: { type: 'fixed', delay: 50 },
    async handle(n) {
      // The handler's own span: must be a child of the attempt's span.
      await app.startActiveSpan('charge card', async (span) => {
        span.setAttribute('notification', n.id);
        span.end();
      });
      if (n.payload && n.payload.failFirst && n.attempt === 1) throw new Error('card declined once');
    },
  },
  {
    id: 'tr-batch',
    channels: ['orders'],
    batch: { size: 50, maxWaitMs: 500 },
    async handleBatch(ns) {
      await app.startActiveSpan('bulk index', async (span) => {
        span.setAttribute('count', ns.length);
        span.end();
      });
    },
  },
];
`;

const hex = (bytes: number): string => randomBytes(bytes).toString('hex');

let t: TestEnv;
let spansFile: string;
let work: CliHandle;
let listener: Listener | undefined;
const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

function workerSpans(): SpanJson[] {
  if (!existsSync(spansFile)) return [];
  return readFileSync(spansFile, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as SpanJson);
}

beforeAll(async () => {
  provider.register();
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
  await t.pool.query(`CREATE TABLE "${t.schema}".things (id int PRIMARY KEY, name text)`);
  await t.pool.query(
    `CREATE TRIGGER things_notify AFTER INSERT ON "${t.schema}".things
       FOR EACH ROW EXECUTE FUNCTION "${t.schema}".notify_data_change('things')`,
  );
  const dir = writeOpsConsumers({ 'consumers.mjs': CONSUMERS });
  spansFile = join(dir, 'spans.jsonl');
  // As a user enables export: the SDK registered with `node --import`.
  work = startNode(['--import', REGISTER, CLI_BIN, 'work', '--consumers-dir', dir], {
    // Batched export: the spans reach the file only when work flushes the SDK as it stops.
    env: { ...t.env, PGQ_TEST_SPANS_FILE: spansFile, PGQ_TEST_SPANS_BATCH: '1' },
  });
  // Registered (startFrom 'now') before anything is written.
  await waitFor(
    async () => (await t.pool.query(`SELECT 1 FROM "${t.schema}".consumers`)).rowCount === 2,
    { timeoutMs: 30_000, message: 'both consumers registered' },
  );
});
afterAll(async () => {
  await listener?.stop();
  if (work) {
    work.kill('SIGTERM'); // no-op when the test already stopped it
    await work.waitForExit();
  }
  await provider.shutdown();
  await t?.cleanup();
  removeOpsConsumers();
});

describe('tracing from the writer to the handler', () => {
  it('continues the writer trace in every handler attempt, for TS and SQL writers', async () => {
    const tracer = trace.getTracer('test-writer');
    // The writer's request arrived with a tracestate: it must reach the handler's parent.
    const incoming = trace.setSpanContext(ROOT_CONTEXT, {
      traceId: hex(16),
      spanId: hex(8),
      traceFlags: 1,
      isRemote: true,
      traceState: createTraceState('vendor=abc'),
    });
    const { tsId, writer } = await tracer.startActiveSpan(
      'POST /orders',
      {},
      incoming,
      async (span) => {
        const id = await notify(t.pool, 'orders', { failFirst: true }, { schema: t.schema });
        span.end();
        return { tsId: id, writer: span.spanContext() };
      },
    );

    // A SQL writer: no OpenTelemetry in its process, only the two settings.
    const sqlTrace = { traceId: hex(16), spanId: hex(8) };
    const client = await t.pool.connect();
    let sqlId: string;
    try {
      await client.query('BEGIN');
      await client.query(
        `SET LOCAL pgq_bridge.traceparent = '00-${sqlTrace.traceId}-${sqlTrace.spanId}-01'`,
      );
      await client.query(`SET LOCAL pgq_bridge.tracestate = 'sql=1'`);
      const res = await client.query<{ id: string }>(
        `SELECT "${t.schema}".notify('orders', '{"from":"sql"}') AS id`,
      );
      sqlId = res.rows[0].id;
      await client.query(`INSERT INTO "${t.schema}".things VALUES (1, 'from sql')`);
      await client.query('COMMIT');
    } finally {
      client.release();
    }

    // withContext inside a span: the trigger payload carries the span's context.
    const ctxWriter = await tracer.startActiveSpan('PATCH /things', async (span) => {
      await withContext(t.pool, { user: 7 }, (c) =>
        c.query(`INSERT INTO "${t.schema}".things VALUES (2, 'from withContext')`),
      );
      span.end();
      return span.spanContext();
    });
    // No span active: the handler's span starts a trace of its own.
    const plainId = await context.with(ROOT_CONTEXT, () =>
      notify(t.pool, 'orders', { plain: true }, { schema: t.schema }),
    );

    const stored = await t.pool.query<{
      id: string;
      traceparent: string | null;
      tracestate: string | null;
    }>(`SELECT id::text, traceparent, tracestate FROM "${t.schema}".notifications ORDER BY id`);
    const byId = new Map(stored.rows.map((r) => [r.id, r]));
    expect(byId.get(tsId)).toMatchObject({
      traceparent: `00-${writer.traceId}-${writer.spanId}-01`,
      tracestate: 'vendor=abc',
    });
    expect(byId.get(sqlId)).toMatchObject({
      traceparent: `00-${sqlTrace.traceId}-${sqlTrace.spanId}-01`,
      tracestate: 'sql=1',
    });
    expect(byId.get(plainId)).toMatchObject({ traceparent: null, tracestate: null });
    const things = stored.rows.filter((r) => ![tsId, sqlId, plainId].includes(r.id));
    expect(things.map((r) => r.traceparent)).toEqual([
      `00-${sqlTrace.traceId}-${sqlTrace.spanId}-01`,
      `00-${ctxWriter.traceId}-${ctxWriter.spanId}-01`,
    ]);

    listener = createListener({ settings: apiSettings(t) });
    await listener.start();

    // Every delivery done (tr-one: 5 notifications, one of them retried; tr-batch: the 3 on
    // 'orders'), then work stops gracefully and must flush its buffered spans on the way out.
    await waitFor(
      async () => {
        const { rows } = await t.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM "${t.schema}".deliveries WHERE status = 'completed'`,
        );
        return rows[0].n === 8;
      },
      { timeoutMs: 30_000, message: 'every delivery completed' },
    );
    expect(workerSpans()).toEqual([]); // still buffered in the worker's SDK
    work.kill('SIGTERM');
    expect((await work.waitForExit()).code).toBe(0);
    const process = (s: SpanJson, consumer: string) =>
      s.name === `${consumer} process` && s.kind === SpanKind.CONSUMER;
    const spans = workerSpans();
    const one = spans.filter((s) => process(s, 'tr-one'));
    const ofMessage = (id: string) =>
      one
        .filter((s) => s.attributes['messaging.message.id'] === id)
        .sort(
          (a, b) =>
            Number(a.attributes['pgq_bridge.attempt']) - Number(b.attributes['pgq_bridge.attempt']),
        );

    // The TS writer: both attempts are children of the writer's span, in its trace.
    const tsAttempts = ofMessage(tsId);
    expect(tsAttempts.map((s) => s.attributes['pgq_bridge.attempt'])).toEqual([1, 2]);
    for (const s of tsAttempts) {
      expect(s.traceId).toBe(writer.traceId);
      expect(s.parentSpanId).toBe(writer.spanId);
      expect(s.parentTraceState).toBe('vendor=abc');
      expect(s.attributes).toMatchObject({
        'messaging.system': 'pgq-bridge',
        'messaging.destination.name': 'orders',
        'messaging.message.id': tsId,
        'messaging.consumer.group.name': 'tr-one',
        'messaging.operation.type': 'process',
      });
    }
    expect(tsAttempts[0].status.code).toBe(SpanStatusCode.ERROR);
    expect(tsAttempts[0].status.message).toBe('card declined once');
    expect(tsAttempts[0].events.map((e) => e.name)).toContain('exception');
    expect(tsAttempts[1].status.code).not.toBe(SpanStatusCode.ERROR);

    // The handler's own spans are children of the attempt's span.
    for (const attempt of tsAttempts) {
      const own = spans.filter(
        (s) => s.name === 'charge card' && s.parentSpanId === attempt.spanId,
      );
      expect(own).toHaveLength(1);
      expect(own[0].traceId).toBe(writer.traceId);
    }

    // The SQL writer (notify() and the trigger in the same transaction).
    const sqlSpans = one.filter((s) => s.traceId === sqlTrace.traceId);
    expect(sqlSpans).toHaveLength(2);
    for (const s of sqlSpans) {
      expect(s.parentSpanId).toBe(sqlTrace.spanId);
      expect(s.parentTraceState).toBe('sql=1');
    }
    expect(sqlSpans.map((s) => s.attributes['messaging.destination.name']).sort()).toEqual([
      'orders',
      'things',
    ]);
    // withContext: the trigger payload continues the PATCH span's trace.
    const ctxSpan = one.find((s) => s.traceId === ctxWriter.traceId);
    expect(ctxSpan?.parentSpanId).toBe(ctxWriter.spanId);
    // No writer span: a root span, in a trace of its own.
    const plain = ofMessage(plainId);
    expect(plain).toHaveLength(1);
    expect(plain[0].parentSpanId).toBeUndefined();
    expect([writer.traceId, sqlTrace.traceId, ctxWriter.traceId]).not.toContain(plain[0].traceId);

    // The batch consumer: one span per handler call, linked to every writer; its handler's
    // span is a child of it.
    const batch = spans.filter((s) => process(s, 'tr-batch'));
    const linked = batch.flatMap((s) => s.links.map((l) => `${l.traceId}-${l.spanId}`));
    expect(linked).toEqual(
      expect.arrayContaining([
        `${writer.traceId}-${writer.spanId}`,
        `${sqlTrace.traceId}-${sqlTrace.spanId}`,
      ]),
    );
    for (const s of batch) {
      expect(s.attributes).toMatchObject({
        'messaging.system': 'pgq-bridge',
        'messaging.consumer.group.name': 'tr-batch',
        'messaging.destination.name': 'orders',
        'pgq_bridge.attempt': 1,
      });
      expect(spans.some((c) => c.name === 'bulk index' && c.parentSpanId === s.spanId)).toBe(true);
    }

    // The listener's batch: PRODUCER spans (in this process) linked to the rows' writers.
    const sends = exporter.getFinishedSpans().filter((s) => s.name === 'pgq-bridge send');
    expect(sends.length).toBeGreaterThan(0);
    expect(sends.every((s) => s.kind === SpanKind.PRODUCER)).toBe(true);
    expect(
      sends.reduce((n, s) => n + Number(s.attributes['messaging.batch.message_count']), 0),
    ).toBe(5);
    const sendLinks = sends.flatMap((s) => s.links.map((l) => l.context.spanId));
    expect(sendLinks).toEqual(
      expect.arrayContaining([writer.spanId, sqlTrace.spanId, ctxWriter.spanId]),
    );
  });
});
