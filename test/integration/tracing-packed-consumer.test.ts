/**
 * Tracing of a packed consumer (`batch` + plain `handle`), real SDK on both sides (as in
 * tracing-writer-to-handler): three notifications written in one transaction, each inside a span
 * of its own, travel in one pack; each handler run is a CONSUMER span of its own, child of its
 * own writer's span, and the handler's spans are children of it.
 */
import { join } from 'node:path';
import { existsSync, readFileSync } from 'node:fs';
import { SpanKind, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createListener, migrate, notify, type Listener } from '../../src/index.js';
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
  attributes: Record<string, unknown>;
}

const CONSUMERS = `
import { trace } from '@opentelemetry/api';
const app = trace.getTracer('app');
export default {
  id: 'tr-packed', channels: ['orders'], batch: { size: 50, maxWaitMs: 0 }, concurrency: 3,
  async handle(n) {
    await app.startActiveSpan('charge card', async (span) => {
      span.setAttribute('notification', n.id);
      span.end();
    });
  },
};
`;

let t: TestEnv;
let spansFile: string;
let work: CliHandle;
let listener: Listener | undefined;
const provider = new NodeTracerProvider({
  spanProcessors: [new SimpleSpanProcessor(new InMemorySpanExporter())],
});

beforeAll(async () => {
  provider.register();
  t = createTestEnv();
  await migrate({ db: t.pool, schema: t.schema });
  const dir = writeOpsConsumers({ 'consumers.mjs': CONSUMERS });
  spansFile = join(dir, 'spans.jsonl');
  work = startNode(['--import', REGISTER, CLI_BIN, 'work', '--consumers-dir', dir], {
    env: { ...t.env, PGQ_TEST_SPANS_FILE: spansFile, PGQ_TEST_SPANS_BATCH: '1' },
  });
  await waitFor(
    async () => (await t.pool.query(`SELECT 1 FROM "${t.schema}".consumers`)).rowCount === 1,
    { timeoutMs: 30_000, message: 'the consumer registered' },
  );
});
afterAll(async () => {
  await listener?.stop();
  if (work) {
    work.kill('SIGTERM');
    await work.waitForExit();
  }
  await provider.shutdown();
  await t?.cleanup();
  removeOpsConsumers();
});

describe('tracing a packed consumer', () => {
  it('gives each notification of a pack its own span, child of its own writer', async () => {
    const tracer = trace.getTracer('test-writer');
    const client = await t.pool.connect();
    const writers = new Map<string, { traceId: string; spanId: string }>();
    try {
      await client.query('BEGIN');
      for (let i = 0; i < 3; i++) {
        await tracer.startActiveSpan(`POST /orders/${i}`, async (span) => {
          const id = await notify(client, 'orders', { i }, { schema: t.schema });
          writers.set(id, span.spanContext());
          span.end();
        });
      }
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    listener = createListener({ settings: apiSettings(t) });
    await listener.start();
    await waitFor(
      async () => {
        const { rows } = await t.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM "${t.schema}".deliveries WHERE status = 'completed'`,
        );
        return rows[0].n === 3;
      },
      { timeoutMs: 30_000, message: 'three deliveries completed' },
    );
    work.kill('SIGTERM');
    expect((await work.waitForExit()).code).toBe(0);
    const spans: SpanJson[] = existsSync(spansFile)
      ? readFileSync(spansFile, 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((line) => JSON.parse(line) as SpanJson)
      : [];
    const runs = spans.filter(
      (s) => s.name === 'tr-packed process' && s.kind === SpanKind.CONSUMER,
    );
    expect(runs).toHaveLength(3);
    for (const [id, writer] of writers) {
      const run = runs.find((s) => s.attributes['messaging.message.id'] === id);
      expect(run, id).toBeDefined();
      expect(run!.traceId).toBe(writer.traceId);
      expect(run!.parentSpanId).toBe(writer.spanId);
      expect(run!.attributes).toMatchObject({
        'messaging.system': 'pgq-bridge',
        'messaging.consumer.group.name': 'tr-packed',
        'messaging.destination.name': 'orders',
        'pgq_bridge.attempt': 1,
      });
      // It ran inside the pack (a job id b<first>-<last>-<hash>), not a job of its own.
      expect(String(run!.attributes['pgq_bridge.job.id'])).toMatch(/^b\d+-\d+-/);
      expect(spans.some((c) => c.name === 'charge card' && c.parentSpanId === run!.spanId)).toBe(
        true,
      );
    }
  });
});
