import type { Queryable } from './store.js';

/** The setting `<schema>.current_context()` reads (0001): the same for every pgq-bridge schema. */
export const CONTEXT_SETTING = 'pgq_bridge.context';

/**
 * Sets the context for the rest of the current transaction (`SET LOCAL`, so it ends with the
 * transaction and never reaches the connection's next one). `''` clears it.
 */
export async function setLocalContext(db: Queryable, json: string): Promise<void> {
  await db.query(`SELECT set_config($1, $2, true)`, [CONTEXT_SETTING, json]);
}

/** The context setting as the current transaction sees it (`''` when unset). */
export async function readLocalContext(db: Queryable): Promise<string> {
  const res = await db.query<{ value: string | null }>(
    `SELECT coalesce(current_setting($1, true), '') AS value`,
    [CONTEXT_SETTING],
  );
  return res.rows[0]?.value ?? '';
}
