/**
 * OpenTelemetry, when the application has it: `@opentelemetry/api` is an optional peer
 * dependency. It is imported on first use (never at start-up) and the outcome is cached, so
 * without it nothing is loaded and every hook costs one variable check. With it but no SDK
 * registered, the API's no-op tracer makes spans free as well.
 *
 * The trace context travels as W3C strings (`traceparent`, `tracestate`): stored with the row,
 * copied into the job data, parsed back by the worker. They are formatted and parsed here, not
 * by the application's propagator, because the column means W3C whatever propagator
 * (B3, Jaeger, ...) the application configured for its HTTP calls.
 */
import type * as OtelApi from '@opentelemetry/api';

/** The `@opentelemetry/api` module. */
export type Otel = typeof OtelApi;

/** A writer's trace context as W3C Trace Context headers. */
export interface TraceHeaders {
  traceparent: string;
  tracestate?: string;
}

/** Tracer name (the instrumentation scope of every pgq-bridge span). */
export const TRACER_NAME = 'pgq-bridge';

/** `messaging.system` of every pgq-bridge span. */
export const MESSAGING_SYSTEM = 'pgq-bridge';

let otel: Otel | null | undefined;
let loading: Promise<Otel | null> | undefined;

/**
 * The API if it was loaded, `null` if it is not installed, `undefined` before the first
 * {@link loadOtel}: what hot paths check before deciding whether to await anything.
 */
export function otelNow(): Otel | null | undefined {
  return otel;
}

/** Imports `@opentelemetry/api` once; resolves to null when it is not installed. */
export function loadOtel(): Promise<Otel | null> {
  if (otel !== undefined) return Promise.resolve(otel);
  loading ??= import('@opentelemetry/api').then(
    (api) => (otel = api),
    () => (otel = null),
  );
  return loading;
}

/** Runs the synchronous `fn` with the API, awaiting the first load only: hot paths stay sync. */
export function withOtel<T>(fn: (api: Otel | null) => T): T | Promise<T> {
  const now = otel;
  if (now !== undefined) return fn(now);
  return loadOtel().then(fn);
}

/**
 * Flushes the spans the application's SDK still buffers (a `BatchSpanProcessor` holds them for
 * seconds), so a `work` or `listen` that drains on SIGTERM and exits does not lose its last
 * spans. Nothing happens when the API was never loaded; waits at most `timeoutMs`.
 */
export async function flushTraces(timeoutMs = 5000): Promise<void> {
  const api = otelNow();
  if (!api) return;
  // The global provider is a proxy; the SDK's provider (which can flush) is its delegate.
  const global = api.trace.getTracerProvider() as { getDelegate?: () => unknown };
  const provider = (global.getDelegate?.() ?? global) as { forceFlush?: () => Promise<void> };
  if (typeof provider.forceFlush !== 'function') return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    provider.forceFlush().catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
      timer.unref();
    }),
  ]);
  clearTimeout(timer);
}

/** The active span's context as W3C headers, or undefined when there is no valid one. */
export function headersOf(api: Otel, ctx = api.context.active()): TraceHeaders | undefined {
  const sc = api.trace.getSpanContext(ctx);
  if (!sc || !api.isSpanContextValid(sc)) return undefined;
  const flags = (sc.traceFlags & 0xff).toString(16).padStart(2, '0');
  const traceparent = `00-${sc.traceId}-${sc.spanId}-${flags}`;
  const tracestate = sc.traceState?.serialize();
  return tracestate ? { traceparent, tracestate } : { traceparent };
}

/**
 * The active trace context of the caller (what `notify()` stores), or undefined. Synchronous
 * once the API's presence is known; only the very first call may return a promise.
 */
export function currentTrace(): TraceHeaders | undefined | Promise<TraceHeaders | undefined> {
  return withOtel((api) => (api ? headersOf(api) : undefined));
}

// version-traceid-parentid-flags; later versions may append fields (W3C Trace Context, 4.3).
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/**
 * Parses a stored `traceparent` (and `tracestate`) into a remote span context. A malformed one
 * (SQL writers store what they were given) yields undefined, never an error: a bad header must
 * not fail a delivery.
 */
export function spanContextOf(
  api: Otel,
  traceparent: string | null | undefined,
  tracestate?: string | null,
): OtelApi.SpanContext | undefined {
  if (!traceparent) return undefined;
  const m = TRACEPARENT.exec(traceparent.trim());
  if (!m) return undefined;
  const [, version, traceId, spanId, flags, rest] = m;
  // Version ff is forbidden; version 00 has exactly four fields.
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  let traceState: OtelApi.TraceState | undefined;
  if (tracestate) {
    try {
      traceState = api.createTraceState(tracestate);
    } catch {
      traceState = undefined;
    }
  }
  const sc: OtelApi.SpanContext = {
    traceId,
    spanId,
    traceFlags: Number.parseInt(flags, 16),
    isRemote: true,
    traceState,
  };
  return api.isSpanContextValid(sc) ? sc : undefined;
}

/** Records a handler's (or a batch's) error on its span. */
export function recordError(api: Otel, span: OtelApi.Span, error: unknown): void {
  const err = error instanceof Error ? error : new Error(String(error));
  span.recordException(err);
  span.setAttribute('error.type', err.name || 'Error');
  span.setStatus({ code: api.SpanStatusCode.ERROR, message: err.message });
}

/** Links to every valid writer context among `carriers` (rows or job data). */
export function linksOf(
  api: Otel,
  carriers: Iterable<{ traceparent?: string | null; tracestate?: string | null }>,
): OtelApi.Link[] {
  const links: OtelApi.Link[] = [];
  for (const c of carriers) {
    const context = spanContextOf(api, c.traceparent, c.tracestate);
    if (context) links.push({ context });
  }
  return links;
}
