/**
 * The listener's bridge batch as an OpenTelemetry PRODUCER span (docs/tracing.md), when
 * `@opentelemetry/api` is installed; otherwise {@link traceBridgeBatch} calls straight through.
 * The span starts a trace of its own and links to the writer context of every row it carried
 * (a batch has many parents; OpenTelemetry's messaging conventions link them instead).
 */
import type { NotificationRow } from '../db/store.js';
import {
  linksOf,
  loadOtel,
  MESSAGING_SYSTEM,
  otelNow,
  recordError,
  TRACER_NAME,
} from '../tracing.js';

/** Runs `send` (enqueue the batch's jobs and commit) in a span for the claimed `rows`. */
export async function traceBridgeBatch<T>(
  rows: readonly NotificationRow[],
  send: () => Promise<T>,
): Promise<T> {
  const otel = otelNow() === null ? null : (otelNow() ?? (await loadOtel()));
  if (!otel) return send();
  const channels = new Set(rows.map((r) => r.channel));
  const span = otel.trace.getTracer(TRACER_NAME).startSpan(
    'pgq-bridge send',
    {
      kind: otel.SpanKind.PRODUCER,
      links: linksOf(otel, rows),
      attributes: {
        'messaging.system': MESSAGING_SYSTEM,
        'messaging.operation.type': 'send',
        'messaging.operation.name': 'send',
        'messaging.batch.message_count': rows.length,
        // Named only when the batch holds a single channel.
        ...(channels.size === 1 ? { 'messaging.destination.name': rows[0].channel } : {}),
        'pgq_bridge.first_id': rows[0]?.id,
        'pgq_bridge.last_id': rows[rows.length - 1]?.id,
      },
    },
    otel.ROOT_CONTEXT,
  );
  try {
    return await otel.context.with(otel.trace.setSpan(otel.ROOT_CONTEXT, span), send);
  } catch (error) {
    recordError(otel, span, error);
    throw error;
  } finally {
    span.end();
  }
}
