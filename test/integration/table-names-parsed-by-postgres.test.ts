/**
 * Issue 11: table and column names are read by Postgres itself (`parse_ident()`), not by a parser
 * of our own: the same quoting and case folding as SQL, and anything that is no identifier is
 * refused as a usage error. The text is a bound parameter, so it cannot carry SQL.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseColumnNames, parseQualifiedName } from '../../src/produce/table-name.js';
import { createTestEnv, type TestEnv } from '../support/env.js';

let t: TestEnv;
beforeAll(() => {
  t = createTestEnv();
});
afterAll(async () => {
  await t.cleanup();
});

describe('parseQualifiedName', () => {
  it.each([
    ['users', { schema: null, name: 'users' }],
    ['Users', { schema: null, name: 'users' }],
    ['public.users', { schema: 'public', name: 'users' }],
    ['Sales."Order Items"', { schema: 'sales', name: 'Order Items' }],
    ['"Sales"."Order Items"', { schema: 'Sales', name: 'Order Items' }],
    [' "Sales" . "Order Items" ', { schema: 'Sales', name: 'Order Items' }],
    ['"a""b".c$1', { schema: 'a"b', name: 'c$1' }],
    ['"x""; DROP TABLE y; --"', { schema: null, name: 'x"; DROP TABLE y; --' }],
    ['"dotted.name"', { schema: null, name: 'dotted.name' }],
    // Postgres folds the ASCII letters of an unquoted name only.
    ['ÜSER', { schema: null, name: 'Üser' }],
  ])('%s', async (input, expected) => {
    expect(await parseQualifiedName(t.pool, input)).toEqual(expected);
  });

  it.each([
    'x"; DROP TABLE y; --',
    'users; DROP TABLE y',
    'a.b.c',
    '"unterminated',
    '""',
    '',
    '1users',
    'public.',
    'nul\0byte',
    `"${'x'.repeat(64)}"`,
  ])('refuses %j', async (input) => {
    await expect(parseQualifiedName(t.pool, input)).rejects.toThrow(
      expect.objectContaining({ code: 'PGQ_INVALID_NAME' }),
    );
  });
});

describe('parseColumnNames', () => {
  it('reads each name with Postgres quoting rules', async () => {
    expect(await parseColumnNames(t.pool, ['status', '"Total, Gross"', 'Email'])).toEqual([
      'status',
      'Total, Gross',
      'email',
    ]);
    await expect(parseColumnNames(t.pool, ['a.b'])).rejects.toThrow(/not a dotted name/);
    await expect(parseColumnNames(t.pool, ['a b'])).rejects.toThrow(/invalid column name/);
  });
});
