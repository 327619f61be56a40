/** An append-at-back, drop-from-front array with O(1) amortized operations and random access (for history logs). */

/** FIFO array: push at the back, drop from the front, index from the front. */
export class Queue<T> {
  private items: T[] = [];
  private head = 0;

  /** Number of elements. */
  get length(): number {
    return this.items.length - this.head;
  }

  /** Element `i` counted from the front (0 = oldest); undefined when out of range. */
  at(i: number): T | undefined {
    return i >= 0 && i < this.length ? this.items[this.head + i] : undefined;
  }

  /** Appends at the back. */
  push(item: T): void {
    this.items.push(item);
  }

  /** Drops the `n` oldest elements (amortized O(n)). */
  dropFront(n: number): void {
    if (n <= 0) return;
    this.head = Math.min(this.items.length, this.head + n);
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
  }

  /** Index of the first element for which `pred` is true, assuming `pred` is monotone (false…false true…true). */
  firstIndexWhere(pred: (item: T) => boolean): number {
    let lo = 0;
    let hi = this.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pred(this.items[this.head + mid]!)) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** Copies the elements, oldest first. */
  toArray(): T[] {
    return this.items.slice(this.head);
  }
}
