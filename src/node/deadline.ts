/** A node-side deadline on any promise, by the injected scheduler's clock (wall clock in kvd, virtual time under the simulator). */
import { DeadlineError } from './backend.js';
import { realScheduler, type Scheduler } from './scheduler.js';

/** Resolves or rejects like `p`, or rejects with DeadlineError at `deadlineMs` (epoch ms on `scheduler`'s clock). */
export function withDeadline<T>(p: Promise<T>, deadlineMs: number, message: string, scheduler: Scheduler = realScheduler): Promise<T> {
  const left = deadlineMs - scheduler.now();
  if (left <= 0) {
    p.catch(() => {});
    return Promise.reject(new DeadlineError(message));
  }
  return new Promise<T>((resolve, reject) => {
    const timer = scheduler.setTimeout(() => reject(new DeadlineError(message)), left);
    p.then(
      (v) => {
        timer.cancel();
        resolve(v);
      },
      (e) => {
        timer.cancel();
        reject(e);
      },
    );
  });
}
