/** A small, strict reader of the Prometheus text exposition format, for the metrics tests. */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

/**
 * Parses Prometheus text; throws on a line that is neither a comment nor a valid sample, and on a
 * metric family declared twice (`# TYPE` repeated), which Prometheus rejects.
 */
export function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  const typed = new Set<string>();
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (line.startsWith('#')) {
      const m = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
      if (m) {
        if (typed.has(m[1])) throw new Error(`metric family declared twice: ${m[1]}`);
        typed.add(m[1]);
      } else if (!/^# HELP \S+ /.test(line)) {
        throw new Error(`bad comment line: ${line}`);
      }
      continue;
    }
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`bad sample line: ${line}`);
    const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
    if (Number.isNaN(value) && m[3] !== 'NaN') throw new Error(`bad value: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(LABEL)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value });
  }
  return samples;
}

/** The value of the one sample named `name` whose labels include `labels` (throws if none). */
export function valueOf(
  samples: Sample[],
  name: string,
  labels: Record<string, string> = {},
): number {
  const found = samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  if (found.length !== 1) {
    throw new Error(`${found.length} samples of ${name} ${JSON.stringify(labels)}`);
  }
  return found[0].value;
}

/** Fetches and parses `url`. */
export async function scrape(url: string, init?: RequestInit): Promise<Sample[]> {
  const res = await fetch(url, init);
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status}`);
  return parsePrometheus(await res.text());
}
