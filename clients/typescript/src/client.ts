import createClient, { defaultPathSerializer, type Client, type Middleware } from "openapi-fetch";

import { AnswerNotUnderstood, DirectoryError } from "./errors.js";
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
   * Abort each request (answer and body) after this many milliseconds (at most
   * 2,147,483,647, about 24 days); the call then rejects with a DOMException named
   * "TimeoutError". Needs AbortSignal.timeout and AbortSignal.any (Node 20.3+, current
   * browsers).
   */
  timeoutMs?: number;
}

// The longest delay timers keep: Node fires a longer AbortSignal.timeout after 1 ms.
const MAX_TIMEOUT_MS = 2 ** 31 - 1;
// What an Authorization header can carry of a key: visible ASCII, no spaces.
const KEY_CHARACTERS = /^[\x21-\x7E]+$/;

export function createDirectoryClient(options: DirectoryClientOptions): DirectoryClient {
  const { baseUrl, key, fetch, timeoutMs } = options;
  if (
    timeoutMs !== undefined &&
    !(Number.isFinite(timeoutMs) && timeoutMs > 0 && timeoutMs <= MAX_TIMEOUT_MS)
  ) {
    throw new RangeError(
      `timeoutMs must be a positive number of milliseconds up to ${MAX_TIMEOUT_MS}, not ${timeoutMs}`,
    );
  }
  // Checked here, because the Headers class would otherwise refuse it on each request with
  // an error that quotes the whole header, the key with it, into whatever logs errors.
  if (key !== undefined && !(typeof key === "string" && KEY_CHARACTERS.test(key.trim()))) {
    throw new TypeError(
      "key must be a portal key (cdir_ and letters and digits), without spaces or control " +
        "characters; leave it out to search anonymously (the value is not shown: it is a secret)",
    );
  }
  const client = createClient<paths, "application/json">({
    baseUrl,
    pathSerializer: pathWithSegments,
    ...(fetch === undefined ? {} : { fetch }),
    ...(key === undefined ? {} : { headers: { Authorization: `Bearer ${key.trim()}` } }),
  });
  client.use(requireJson);
  // Timers take whole milliseconds (Node refuses a fraction): rounded up, never shorter.
  if (timeoutMs !== undefined) client.use(abortAfter(Math.ceil(timeoutMs)));
  return client;
}

/**
 * The path with its parameters, each one whole segment. A value that is empty, "." or ".."
 * is refused before anything is sent: URLs resolve such a segment away, so the request
 * would go to another path ("/v1/ads/.." is "/v1/") and fail there without naming it.
 */
function pathWithSegments(pathname: string, pathParams: Record<string, unknown>): string {
  for (const [, name = ""] of pathname.matchAll(/\{([^{}]+)\}/g)) {
    const value = pathParams[name];
    if (value === undefined || value === null || ["", ".", ".."].includes(String(value))) {
      throw new RangeError(
        `path parameter ${name} must not be missing, empty, "." or "..", not ${JSON.stringify(value ?? null)}`,
      );
    }
  }
  return defaultPathSerializer(pathname, pathParams);
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

/**
 * Every success answer of the API but 204 carries JSON. One that does not (a proxy's HTML
 * page answering 200, an empty body) rejects with an AnswerNotUnderstood naming the
 * request, rather than with JSON.parse's bare SyntaxError, or as data that is undefined.
 * The body is parsed here and once more by openapi-fetch, which has no hook between reading
 * and parsing it: a cost small next to the request's.
 */
const requireJson: Middleware = {
  async onResponse({ request, response, options }) {
    const noBody = response.status === 204 || request.method === "HEAD";
    if (!response.ok || noBody || options.parseAs !== "json") return undefined;
    const body = await response.clone().text();
    try {
      JSON.parse(body);
    } catch (error) {
      throw new AnswerNotUnderstood({
        method: request.method,
        path: new URL(request.url).pathname,
        status: response.status,
        contentType: response.headers.get("Content-Type"),
        body,
        cause: error,
      });
    }
    return undefined;
  },
};

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

/**
 * `unwrap` for a request made with If-None-Match: undefined when the directory answers
 * 304 Not Modified (the copy held, whose ETag was sent, is current), the new data
 * otherwise. `unwrap` itself rejects a 304, since its type promises data.
 * `const changed = await unwrapIfModified(client.GET("/v1/portals/me/ads/{external_id}",
 * { params: { path: { external_id }, header: { "If-None-Match": etag } } }))`.
 */
export async function unwrapIfModified<
  Result extends { data?: unknown; error?: unknown; response: Response },
>(pending: Promise<Result>): Promise<SuccessData<Result> | undefined> {
  const result = await pending;
  if (result.response.status === 304) return undefined;
  return unwrap(Promise.resolve(result));
}
