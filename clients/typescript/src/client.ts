import createClient, { type Client, type Middleware } from "openapi-fetch";

import { DirectoryError } from "./errors.js";
import type { paths } from "./schema.js";

/**
 * openapi-fetch's client over the directory's paths: `client.GET("/v1/ads/{ad_ref}", ...)`
 * with parameters and answers typed from openapi.yaml. Answers are typed as their JSON
 * media type; `searchGeoJSON` reads the GeoJSON one.
 */
export type DirectoryClient = Client<paths, "application/json">;

export interface DirectoryClientOptions {
  /** Where the API is served, e.g. "https://directory.example.org". */
  baseUrl: string;
  /**
   * A portal key (cdir_...), sent as `Authorization: Bearer`: needed for portal operations,
   * and lets search find the portal's own portal-only ads. It is a secret: an app on
   * members' devices searches without one.
   */
  key?: string;
  /** The fetch to use (default: the global one), e.g. one that logs or goes through a proxy. */
  fetch?: typeof globalThis.fetch;
  /**
   * Abort each request (answer and body) after this many milliseconds; the call then
   * rejects with a DOMException named "TimeoutError". Needs AbortSignal.timeout and
   * AbortSignal.any (Node 20.3+, current browsers).
   */
  timeoutMs?: number;
}

export function createDirectoryClient(options: DirectoryClientOptions): DirectoryClient {
  const { baseUrl, key, fetch, timeoutMs } = options;
  if (timeoutMs !== undefined && !(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
    throw new RangeError(`timeoutMs must be a positive number of milliseconds, not ${timeoutMs}`);
  }
  const client = createClient<paths, "application/json">({
    baseUrl,
    ...(fetch === undefined ? {} : { fetch }),
    ...(key === undefined ? {} : { headers: { Authorization: `Bearer ${key}` } }),
  });
  if (timeoutMs !== undefined) client.use(abortAfter(timeoutMs));
  return client;
}

function abortAfter(timeoutMs: number): Middleware {
  return {
    onRequest({ request }) {
      // Combined with the request's own signal, so that a caller's `signal` still aborts.
      const signal = AbortSignal.any([request.signal, AbortSignal.timeout(timeoutMs)]);
      return new Request(request, { signal });
    },
  };
}

/** What `unwrap` resolves to: the success data, or undefined for an empty answer (204). */
export type SuccessData<Result extends { data?: unknown }> = [
  Exclude<Result["data"], undefined>,
] extends [never]
  ? undefined
  : Exclude<Result["data"], undefined>;

/**
 * The data of a successful answer of the typed client; any other answer rejects with a
 * DirectoryError. `const ad = await unwrap(client.GET("/v1/ads/{ad_ref}", {...}))`.
 */
export async function unwrap<
  Result extends { data?: unknown; error?: unknown; response: Response },
>(pending: Promise<Result>): Promise<SuccessData<Result>> {
  const result = await pending;
  if (!result.response.ok) throw DirectoryError.fromResponse(result.response, result.error);
  return result.data as SuccessData<Result>;
}
