// `node --import ./test/support/otel/register-file-exporter.mjs ...`: a real OpenTelemetry SDK
// (sdk-trace-node: AsyncLocalStorage context, W3C propagator) for a pgq-bridge process under test,
// exporting every finished span at once as one JSON line to $PGQ_TEST_SPANS_FILE, which the test
// reads (a child process's in-memory exporter is out of the test's reach).
import { appendFileSync } from 'node:fs';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { BatchSpanProcessor, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';

const file = process.env.PGQ_TEST_SPANS_FILE;
if (!file) throw new Error('register-file-exporter: set PGQ_TEST_SPANS_FILE');

/** A ReadableSpan as plain JSON: what the tests assert on. */
function toJson(span) {
  const ctx = span.spanContext();
  return {
    name: span.name,
    kind: span.kind,
    traceId: ctx.traceId,
    spanId: ctx.spanId,
    parentSpanId: span.parentSpanContext?.spanId,
    traceState: ctx.traceState?.serialize(),
    parentTraceState: span.parentSpanContext?.traceState?.serialize(),
    scope: span.instrumentationScope?.name,
    attributes: span.attributes,
    links: span.links.map((l) => ({ traceId: l.context.traceId, spanId: l.context.spanId })),
    status: span.status,
    events: span.events.map((e) => ({ name: e.name, attributes: e.attributes })),
    pid: process.pid,
  };
}

const exporter = {
  export(spans, done) {
    appendFileSync(file, spans.map((s) => JSON.stringify(toJson(s)) + '\n').join(''));
    done({ code: 0 }); // ExportResultCode.SUCCESS
  },
  shutdown: async () => undefined,
  forceFlush: async () => undefined,
};

// PGQ_TEST_SPANS_BATCH=1: a BatchSpanProcessor that never exports on its own within a test (the
// usual production set-up, exaggerated): spans reach the file only when pgq-bridge flushes the
// SDK on its way out.
const processor =
  process.env.PGQ_TEST_SPANS_BATCH === '1'
    ? new BatchSpanProcessor(exporter, {
        scheduledDelayMillis: 600_000,
        maxExportBatchSize: 10_000,
        maxQueueSize: 10_000,
      })
    : new SimpleSpanProcessor(exporter);
new NodeTracerProvider({ spanProcessors: [processor] }).register();
