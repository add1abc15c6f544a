import { quoteIdent } from '../identifiers.js';
import type { Queryable } from './store.js';

/** The SQL of payloads by reference: the worker reads large payloads from their rows. */
export class PayloadQueries {
  private readonly s: string;

  constructor(schema: string) {
    this.s = quoteIdent(schema);
  }

  /**
   * The payloads (JSON text, exactly as stored) of the given notification ids, in one query on
   * the primary key. Ids whose row is gone are absent from the map.
   */
  async payloadsByIds(db: Queryable, ids: readonly string[]): Promise<Map<string, string>> {
    const { rows } = await db.query<{ id: string; payload: string }>(
      `SELECT id::text AS id, payload::text AS payload
         FROM ${this.s}.notifications WHERE id = ANY($1::bigint[])`,
      [ids],
    );
    return new Map(rows.map((r) => [r.id, r.payload]));
  }
}
