import { UsageError } from '../errors.js';

/** A table name as written by a user: `users`, `public.users`, `"Sales"."Order Items"`. */
export interface QualifiedName {
  /** The schema, or null when the name was not qualified (Postgres' search_path decides). */
  schema: string | null;
  name: string;
}

/** Postgres truncates longer identifiers (NAMEDATALEN - 1); we refuse them instead of guessing. */
const MAX_IDENTIFIER_BYTES = 63;
const UNQUOTED_START = /[A-Za-z_\u0080-\uffff]/;
const UNQUOTED_PART = /[A-Za-z0-9_$\u0080-\uffff]/;

/**
 * Reads identifiers separated by `separator` with Postgres' rules: `"..."` keeps its text exactly
 * (`""` is one quote), an unquoted identifier is folded to lower case. Anything else is refused,
 * so a name can never carry SQL.
 */
function splitIdentifiers(input: string, separator: '.' | ',', what: string): string[] {
  const fail = (why: string): never => {
    throw new UsageError(`invalid ${what} ${JSON.stringify(input)}: ${why}`, 'PGQ_INVALID_NAME');
  };
  const parts: string[] = [];
  let i = 0;
  const skipSpaces = (): void => {
    while (i < input.length && /\s/.test(input[i])) i++;
  };
  for (;;) {
    skipSpaces();
    let part = '';
    if (input[i] === '"') {
      i++;
      for (;;) {
        if (i >= input.length) fail('unterminated quoted identifier');
        if (input[i] === '"') {
          if (input[i + 1] === '"') {
            part += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        part += input[i++];
      }
      if (part === '') fail('empty quoted identifier');
    } else {
      if (i >= input.length || !UNQUOTED_START.test(input[i])) {
        fail(
          `expected an identifier at position ${i + 1} (quote names with special characters: "My Table")`,
        );
      }
      while (i < input.length && UNQUOTED_PART.test(input[i])) part += input[i++];
      part = part.replace(/[A-Z]/g, (c) => c.toLowerCase());
    }
    if (part.includes('\0')) fail('identifiers cannot contain NUL');
    if (Buffer.byteLength(part) > MAX_IDENTIFIER_BYTES) {
      fail(`identifier longer than ${MAX_IDENTIFIER_BYTES} bytes`);
    }
    parts.push(part);
    skipSpaces();
    if (i >= input.length) return parts;
    if (input[i] !== separator) fail(`unexpected ${JSON.stringify(input[i])} at position ${i + 1}`);
    i++;
  }
}

/**
 * Parses `table` or `schema.table` the way Postgres does: `Sales."Order Items"` is schema `sales`,
 * table `Order Items`; `"Sales"."Order Items"` keeps both cases.
 *
 * @throws UsageError `PGQ_INVALID_NAME` for anything that is not one or two identifiers
 */
export function parseQualifiedName(input: string): QualifiedName {
  const parts = splitIdentifiers(input, '.', 'table name');
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

/** Parses a comma-separated list of column names (`a, "Total Price"`) with Postgres' rules. */
export function parseIdentifierList(input: string): string[] {
  return splitIdentifiers(input, ',', 'column list');
}
