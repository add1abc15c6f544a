import type { Queryable } from './store.js';

/** The setting `<schema>.current_context()` reads (0001): the same for every pgq-bridge schema. */
export const CONTEXT_SETTING = 'pgq_bridge.context';

/** The settings the SQL writers read the trace context from (0010); `''` means none. */
export const TRACEPARENT_SETTING = 'pgq_bridge.traceparent';
export const TRACESTATE_SETTING = 'pgq_bridge.tracestate';

/** A transaction's trace settings. */
export interface LocalTrace {
  traceparent: string;
  tracestate?: string;
}

/**
 * Sets the context for the rest of the current transaction (`SET LOCAL`, so it ends with the
 * transaction and never reaches the connection's next one). `''` clears it. With `trace`, the
 * trace settings are set in the same statement (no extra round trip), so trigger payloads
 * written later in the transaction carry the trace too.
 */
export async function setLocalContext(
  db: Queryable,
  json: string,
  trace?: LocalTrace,
): Promise<void> {
  if (!trace) {
    await db.query(`SELECT set_config($1, $2, true)`, [CONTEXT_SETTING, json]);
    return;
  }
  await db.query(
    `SELECT set_config($1, $2, true), set_config($3, $4, true), set_config($5, $6, true)`,
    [
      CONTEXT_SETTING,
      json,
      TRACEPARENT_SETTING,
      trace.traceparent,
      TRACESTATE_SETTING,
      trace.tracestate ?? '',
    ],
  );
}

/** The trace settings as the current transaction sees them (`''` when unset). */
export async function readLocalTrace(db: Queryable): Promise<Required<LocalTrace>> {
  const res = await db.query<{ traceparent: string | null; tracestate: string | null }>(
    `SELECT coalesce(current_setting($1, true), '') AS traceparent,
            coalesce(current_setting($2, true), '') AS tracestate`,
    [TRACEPARENT_SETTING, TRACESTATE_SETTING],
  );
  return {
    traceparent: res.rows[0]?.traceparent ?? '',
    tracestate: res.rows[0]?.tracestate ?? '',
  };
}

/** The context setting as the current transaction sees it (`''` when unset). */
export async function readLocalContext(db: Queryable): Promise<string> {
  const res = await db.query<{ value: string | null }>(
    `SELECT coalesce(current_setting($1, true), '') AS value`,
    [CONTEXT_SETTING],
  );
  return res.rows[0]?.value ?? '';
}
