import { UsageError } from '../errors.js';
import { identifierParts, type QualifiedName } from '../db/triggers.js';
import type { Queryable } from '../db/store.js';

export type { QualifiedName } from '../db/triggers.js';

/** Postgres truncates longer identifiers (NAMEDATALEN - 1); we refuse them instead of guessing. */
const MAX_IDENTIFIER_BYTES = 63;

/**
 * Postgres' own reading of `input` as a dotted name (`parse_ident()`): `"..."` keeps its text
 * exactly (`""` is one quote), unquoted parts fold to lower case, anything else is refused. The
 * text travels as a bound parameter, so a name can never carry SQL.
 */
async function partsOf(db: Queryable, input: string, what: string): Promise<string[]> {
  const fail = (why: string): never => {
    throw new UsageError(`invalid ${what} ${JSON.stringify(input)}: ${why}`, 'PGQ_INVALID_NAME');
  };
  if (input.includes('\0')) fail('identifiers cannot contain NUL');
  const parts = await identifierParts(db, input);
  if (parts === null) {
    fail(
      'Postgres: string is not a valid identifier (quote names with special characters: "My Table")',
    );
  }
  for (const part of parts!) {
    if (Buffer.byteLength(part) > MAX_IDENTIFIER_BYTES) {
      fail(`identifier longer than ${MAX_IDENTIFIER_BYTES} bytes`);
    }
  }
  return parts!;
}

/**
 * Parses `table` or `schema.table` as Postgres does: `Sales."Order Items"` is schema `sales`,
 * table `Order Items`; `"Sales"."Order Items"` keeps both cases.
 *
 * @throws UsageError `PGQ_INVALID_NAME` for anything that is not one or two identifiers
 */
export async function parseQualifiedName(db: Queryable, input: string): Promise<QualifiedName> {
  const parts = await partsOf(db, input, 'table name');
  if (parts.length > 2) {
    throw new UsageError(
      `invalid table name ${JSON.stringify(input)}: use table or schema.table`,
      'PGQ_INVALID_NAME',
    );
  }
  return parts.length === 2
    ? { schema: parts[0], name: parts[1] }
    : { schema: null, name: parts[0] };
}

/** Column names as written in SQL (`status`, `"Total, Gross"`) → their exact names, per Postgres. */
export async function parseColumnNames(db: Queryable, items: readonly string[]): Promise<string[]> {
  const names: string[] = [];
  for (const item of items) {
    const parts = await partsOf(db, item, 'column name');
    if (parts.length !== 1) {
      throw new UsageError(
        `invalid column name ${JSON.stringify(item)}: a column of the table, not a dotted name`,
        'PGQ_INVALID_NAME',
      );
    }
    names.push(parts[0]);
  }
  return names;
}

/**
 * Splits `a, "Total, Gross"` at the commas outside double quotes; Postgres reads each name
 * ({@link parseColumnNames}). Only splitting happens here, so that `--columns` can be checked
 * for empty items before a connection exists.
 */
export function splitIdentifierList(input: string): string[] {
  const items: string[] = [];
  let current = '';
  let quoted = false;
  for (const ch of input) {
    if (ch === '"') quoted = !quoted;
    if (ch === ',' && !quoted) {
      items.push(current.trim());
      current = '';
    } else {
      current += ch;
    }
  }
  items.push(current.trim());
  if (items.some((item) => item === '')) {
    throw new UsageError(
      `invalid column list ${JSON.stringify(input)}: an empty name`,
      'PGQ_INVALID_NAME',
    );
  }
  return items;
}
