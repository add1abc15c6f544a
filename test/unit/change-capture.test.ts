/** Issue 4, pure parts: column-list splitting, trigger DDL, and `n.change` from a payload. */
import { describe, expect, it } from 'vitest';
import { conditionFor, planTriggers, triggerName } from '../../src/db/triggers.js';
import { changeOf, toNotification } from '../../src/consume/notification.js';
import { splitIdentifierList } from '../../src/produce/table-name.js';

describe('splitIdentifierList', () => {
  it('splits at commas outside double quotes only; Postgres reads the names', () => {
    expect(splitIdentifierList('status, "Total, Gross",Email')).toEqual([
      'status',
      '"Total, Gross"',
      'Email',
    ]);
    expect(() => splitIdentifierList('a,,b')).toThrow(/invalid column list/);
    expect(() => splitIdentifierList('a,')).toThrow(/invalid column list/);
  });
});

describe('trigger DDL', () => {
  const table = {
    oid: 1,
    schema: 'Sales',
    name: 'Order "Items"',
    primaryKey: ['order_id', "it's"],
  };

  it('quotes every identifier and argument', () => {
    const [insert] = planTriggers('pgq_bridge', table, { channel: 'orders', events: ['insert'] });
    expect(insert.sql).toBe(
      `CREATE TRIGGER "pgq_bridge_insert" AFTER INSERT ON "Sales"."Order ""Items""" FOR EACH ROW ` +
        `EXECUTE FUNCTION "pgq_bridge".notify_data_change('orders', 'order_id', 'it''s')`,
    );
  });

  it('one trigger per event; --columns narrows UPDATE only, --when applies to each', () => {
    const spec = {
      channel: 'c',
      events: ['delete', 'update', 'insert'] as const,
      columns: ['a', 'B"'],
      when: 'NEW.x > 0',
    };
    const planned = planTriggers('app', table, spec);
    expect(planned.map((p) => p.name)).toEqual([
      'pgq_bridge_app_insert',
      'pgq_bridge_app_update',
      'pgq_bridge_app_delete',
    ]);
    expect(conditionFor('insert', spec)).toBe('NEW.x > 0');
    expect(conditionFor('update', spec)).toBe(
      '(OLD."a" IS DISTINCT FROM NEW."a" OR OLD."B""" IS DISTINCT FROM NEW."B""") AND (NEW.x > 0)',
    );
    expect(conditionFor('delete', { channel: 'c', events: ['delete'], columns: ['a'] })).toBeNull();
  });

  it('trigger names stay within 63 bytes and distinct per schema', () => {
    const long = 's'.repeat(63);
    const names = (['insert', 'update', 'delete'] as const).map((e) => triggerName(long, e));
    expect(new Set(names).size).toBe(3);
    for (const name of names) expect(Buffer.byteLength(name)).toBeLessThanOrEqual(63);
    expect(triggerName(long, 'insert')).not.toBe(triggerName(`${long.slice(1)}t`, 'insert'));
  });
});

describe('n.change', () => {
  const payload = (extra: Record<string, unknown>) => ({
    schema: 'public',
    table: 't',
    action: 'UPDATE',
    old: { id: 1, a: 1, b: { x: [1, 2] }, c: null },
    new: { id: 1, a: 2, b: { x: [1, 2] }, c: 'set' },
    context: { userId: 3 },
    ...extra,
  });
  const job = (p: unknown, context: string | null = null) =>
    toNotification(
      {
        id: '9',
        channel: 'data_change',
        payload: JSON.stringify(p),
        context,
        createdAt: new Date(0).toISOString(),
      },
      1,
      false,
    );

  it('uses the id column without primary_key, the key columns with it', () => {
    expect(changeOf(payload({}))?.recordId).toBe(1);
    expect(
      changeOf(payload({ primary_key: ['a', 'c'], new: { a: 5, c: 'k', id: 0 } }))?.recordId,
    ).toEqual({ a: 5, c: 'k' });
    expect(changeOf(payload({ primary_key: ['a'] }))?.recordId).toBe(2);
    expect(changeOf(payload({ action: 'DELETE', new: null }))?.recordId).toBe(1);
    expect(changeOf(payload({ old: { k: 1 }, new: { k: 1 } }))?.recordId).toBeNull();
  });

  it('is undefined for other payloads', () => {
    expect(changeOf({ hello: 'world' })).toBeUndefined();
    expect(changeOf(payload({ action: 'TRUNCATE' }))).toBeUndefined();
    expect(changeOf([1, 2])).toBeUndefined();
    const n = job({ total: 1 });
    expect(n.change).toBeUndefined();
    expect([n.isInsert(), n.isUpdate(), n.isDelete(), n.changedColumns()]).toEqual([
      false,
      false,
      false,
      [],
    ]);
  });

  it('helpers and context', () => {
    const n = job(payload({}));
    expect(n.isUpdate()).toBe(true);
    expect(n.isInsert() || n.isDelete()).toBe(false);
    expect(n.changedColumns()).toEqual(['a', 'c']);
    // The row's context column wins; the payload's is the fallback.
    expect(n.context).toEqual({ userId: 3 });
    expect(job(payload({}), '{"userId":4}').context).toEqual({ userId: 4 });
    expect(job(payload({ action: 'INSERT', old: null })).changedColumns()).toEqual([]);
  });
});
