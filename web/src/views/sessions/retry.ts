// Waiting and retrying, the contract's way: only UNAVAILABLE is retried, and only calls
// that are safe to repeat (reads, or commands that carry the same request_id each time).
import { retryable } from "../../lib/errors";

/** Resolves after `ms`, early when the browser comes back online; rejects when aborted. */
export function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const done = () => {
      clearTimeout(timer);
      window.removeEventListener("online", done);
      signal?.removeEventListener("abort", aborted);
      resolve();
    };
    const aborted = () => {
      clearTimeout(timer);
      window.removeEventListener("online", done);
      reject(signal?.reason);
    };
    const timer = setTimeout(done, ms);
    window.addEventListener("online", done);
    signal?.addEventListener("abort", aborted, { once: true });
  });
}

/** Exponential backoff with a little jitter, so many tabs do not come back in step. */
export function backoff(attempt: number): number {
  return Math.min(10_000, 500 * 2 ** Math.max(0, attempt - 1)) + Math.floor(Math.random() * 250);
}

/** `call()`, again after a pause when it answers UNAVAILABLE, up to `tries` times in all. */
export async function retrying<T>(call: () => Promise<T>, signal?: AbortSignal, tries = 3): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      if (attempt >= tries || !retryable(error) || signal?.aborted) throw error;
      await pause(backoff(attempt), signal);
    }
  }
}
