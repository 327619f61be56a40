/** Key helpers: UTF-8 length, byte-order (code point) comparison and binary search over sorted key arrays. */

/**
 * UTF-8 byte length of `s`, or -1 when `s` is not well-formed UTF-16 (contains a lone surrogate,
 * which could not round-trip through UTF-8). O(length), no allocation.
 */
export function utf8ByteLength(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdfff) {
      const d = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
      if (c > 0xdbff || d < 0xdc00 || d > 0xdfff) return -1;
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/** Maps a code unit >= 0xD800 so that code-unit order becomes code-point order. */
function fixup(c: number): number {
  return c >= 0xe000 ? c - 0x800 : c + 0x2000;
}

/**
 * Total order on keys equal to the byte order of their UTF-8 encodings (i.e. code point order),
 * as etcd orders keys; differs from JS `<` only for supplementary characters vs U+E000–U+FFFF.
 * Returns a negative number, zero or a positive number.
 */
export function compareKeys(a: string, b: string): number {
  if (a === b) return 0;
  const n = a.length < b.length ? a.length : b.length;
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x !== y) {
      if (x >= 0xd800 && y >= 0xd800) {
        x = fixup(x);
        y = fixup(y);
      }
      return x < y ? -1 : 1;
    }
  }
  return a.length < b.length ? -1 : 1;
}

/** Index of the first element of the sorted array `keys` that is >= `key` (binary search, O(log n)). */
export function lowerBound(keys: readonly string[], key: string): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareKeys(keys[mid]!, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Index of the first element of the sorted array `keys` that is > `key` (binary search, O(log n)). */
export function upperBound(keys: readonly string[], key: string): number {
  let lo = 0;
  let hi = keys.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareKeys(keys[mid]!, key) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
