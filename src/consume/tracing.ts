/**
 * Handler attempts as OpenTelemetry CONSUMER spans (docs/tracing.md), when `@opentelemetry/api`
 * is installed; otherwise the wrappers call straight through.
 *
 * - One notification per job: the span `<consumer> process` is a child of the writer's context
 *   (the `traceparent` the job data carries), so the trace runs from the request that wrote the
 *   notification to the handler; the handler runs inside it, so its own spans are its children.
 * - A batch handler call (`handleBatch`, several notifications): one span per call, a new trace
 *   linked to every notification's writer context (OpenTelemetry's rule for batch receivers).
 * - A packed job whose notifications go to `handle` one by one: one span per call, as for a
 *   job of its own ({@link traceHandleCall}).
 */
import type { Job } from 'bullmq';
import type { Span, SpanOptions } from '@opentelemetry/api';
import {
  linksOf,
  loadOtel,
  MESSAGING_SYSTEM,
  otelNow,
  recordError,
  spanContextOf,
  TRACER_NAME,
  type Otel,
} from '../tracing.js';
import type { NotificationJobData } from './notification.js';
import { attemptOf } from './job-data.js';

/** The API, awaiting only the first load; null when it is not installed. */
async function api(): Promise<Otel | null> {
  return otelNow() ?? loadOtel();
}

/** Runs `fn` in a span made active (so the handler's spans are its children), ending it after. */
async function inSpan<T>(
  otel: Otel,
  name: string,
  options: SpanOptions,
  parent: ReturnType<Otel['context']['active']>,
  fn: () => Promise<T>,
): Promise<T> {
  const span: Span = otel.trace.getTracer(TRACER_NAME).startSpan(name, options, parent);
  try {
    return await otel.context.with(otel.trace.setSpan(parent, span), fn);
  } catch (error) {
    recordError(otel, span, error);
    throw error;
  } finally {
    span.end();
  }
}

/**
 * Wraps a one-notification-per-job processor: each attempt runs in a CONSUMER span, child of the
 * writer's context, with the messaging attributes and the attempt number.
 */
export function traceJobs(
  consumerId: string,
  processor: (job: Job) => Promise<unknown>,
): (job: Job) => Promise<unknown> {
  return (job: Job) =>
    traceHandleCall(
      consumerId,
      (job.data ?? {}) as Partial<NotificationJobData>,
      attemptOf(job),
      () => processor(job),
      job.id,
    );
}

/**
 * Runs one handler call for one notification (`entry`: its job data) in a CONSUMER span, child
 * of the writer's context: what {@link traceJobs} does per job, and what a runner that calls
 * `handle` once per notification of a packed job wraps each call in.
 */
export async function traceHandleCall<T>(
  consumerId: string,
  entry: Partial<NotificationJobData>,
  attempt: number,
  call: () => Promise<T>,
  jobId?: string,
): Promise<T> {
  const otel = otelNow() === null ? null : await api();
  if (!otel) return call();
  const writer = spanContextOf(otel, entry.traceparent, entry.tracestate);
  const parent = writer
    ? otel.trace.setSpanContext(otel.ROOT_CONTEXT, writer)
    : otel.context.active();
  const attributes: SpanOptions['attributes'] = {
    'messaging.system': MESSAGING_SYSTEM,
    'messaging.operation.type': 'process',
    'messaging.operation.name': 'process',
    'messaging.consumer.group.name': consumerId,
    'pgq_bridge.attempt': attempt,
  };
  if (typeof entry.channel === 'string') attributes['messaging.destination.name'] = entry.channel;
  if (typeof entry.id === 'string') attributes['messaging.message.id'] = entry.id;
  if (jobId !== undefined) attributes['pgq_bridge.job.id'] = jobId;
  if (entry.replay === true) attributes['pgq_bridge.replay'] = true;
  return inSpan(
    otel,
    `${consumerId} process`,
    { kind: otel.SpanKind.CONSUMER, attributes },
    parent,
    call,
  );
}

/**
 * Runs one batch handler call (`call`) in a CONSUMER span linked to the writer context of every
 * notification it handles.
 */
export async function traceBatchCall<T>(
  consumerId: string,
  entries: readonly NotificationJobData[],
  attempt: number,
  call: () => Promise<T>,
): Promise<T> {
  const otel = otelNow() === null ? null : await api();
  if (!otel) return call();
  const channels = new Set(entries.map((e) => e.channel));
  const attributes: SpanOptions['attributes'] = {
    'messaging.system': MESSAGING_SYSTEM,
    'messaging.operation.type': 'process',
    'messaging.operation.name': 'process',
    'messaging.consumer.group.name': consumerId,
    'messaging.batch.message_count': entries.length,
    'pgq_bridge.attempt': attempt,
  };
  // The destination is only named when the call holds a single channel.
  if (channels.size === 1) attributes['messaging.destination.name'] = [...channels][0];
  if (entries.length === 1) attributes['messaging.message.id'] = entries[0].id;
  return inSpan(
    otel,
    `${consumerId} process`,
    { kind: otel.SpanKind.CONSUMER, attributes, links: linksOf(otel, entries) },
    otel.context.active(),
    call,
  );
}
