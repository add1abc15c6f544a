/**
 * The W3C Trace Context strings pgq-bridge stores and reads back (src/tracing.ts): formatted from
 * the active span, parsed into a remote parent; a malformed one (SQL writers store what they are
 * given) is ignored, never an error.
 */
import * as api from '@opentelemetry/api';
import { describe, expect, it } from 'vitest';
import { headersOf, linksOf, spanContextOf } from '../../src/tracing.js';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN = '00f067aa0ba902b7';

function active(traceFlags: number, traceState?: string): api.Context {
  return api.trace.setSpanContext(api.ROOT_CONTEXT, {
    traceId: TRACE,
    spanId: SPAN,
    traceFlags,
    traceState: traceState === undefined ? undefined : api.createTraceState(traceState),
  });
}

describe('trace context strings', () => {
  it('formats the active span as traceparent (and tracestate when there is one)', () => {
    expect(headersOf(api, active(1))).toEqual({ traceparent: `00-${TRACE}-${SPAN}-01` });
    expect(headersOf(api, active(0, 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7'))).toEqual({
      traceparent: `00-${TRACE}-${SPAN}-00`,
      tracestate: 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7',
    });
    expect(headersOf(api, api.ROOT_CONTEXT)).toBeUndefined();
    const invalid = api.trace.setSpanContext(api.ROOT_CONTEXT, api.INVALID_SPAN_CONTEXT);
    expect(headersOf(api, invalid)).toBeUndefined();
  });

  it('parses a stored traceparent into a remote parent, tracestate included', () => {
    const sc = spanContextOf(api, `00-${TRACE}-${SPAN}-01`, 'rojo=00f067aa0ba902b7');
    expect(sc).toMatchObject({ traceId: TRACE, spanId: SPAN, traceFlags: 1, isRemote: true });
    expect(sc?.traceState?.get('rojo')).toBe('00f067aa0ba902b7');
    // Surrounding whitespace (a hand-written SET LOCAL) is tolerated.
    expect(spanContextOf(api, ` 00-${TRACE}-${SPAN}-00 `)?.traceFlags).toBe(0);
    // A later version may append fields; version 00 may not.
    expect(spanContextOf(api, `01-${TRACE}-${SPAN}-01-extra`)?.spanId).toBe(SPAN);
    expect(spanContextOf(api, `00-${TRACE}-${SPAN}-01-extra`)).toBeUndefined();
  });

  it('ignores malformed or invalid values', () => {
    for (const bad of [
      null,
      undefined,
      '',
      'not a traceparent',
      `ff-${TRACE}-${SPAN}-01`,
      `00-${TRACE.toUpperCase()}-${SPAN}-01`,
      `00-${'0'.repeat(32)}-${SPAN}-01`,
      `00-${TRACE}-${'0'.repeat(16)}-01`,
      `00-${TRACE}-${SPAN}`,
      `00-${TRACE}x-${SPAN}-01`,
    ]) {
      expect(spanContextOf(api, bad), String(bad)).toBeUndefined();
    }
    expect(
      linksOf(api, [
        { traceparent: `00-${TRACE}-${SPAN}-01` },
        { traceparent: 'garbage' },
        { traceparent: null },
        {},
      ]).map((l) => l.context.spanId),
    ).toEqual([SPAN]);
  });
});
