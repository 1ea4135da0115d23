import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, test } from "node:test";

import {
  AnswerNotUnderstood,
  createDirectoryClient,
  DirectoryError,
  search,
  searchAll,
  searchNearby,
  searchPages,
  unwrap,
} from "@commons-directory/client";

import { devicePosition, directoryUrl, rateLimitedUrl, seed } from "./live.js";

const anonymous = createDirectoryClient({ baseUrl: directoryUrl, timeoutMs: 10_000 });

/** Checks that `pending` rejects with an error of `type`, and returns it for more checks. */
async function rejection<E extends Error>(
  pending: Promise<unknown>,
  type: new (...args: never[]) => E,
): Promise<E> {
  try {
    await pending;
  } catch (error) {
    assert.ok(error instanceof type, `not a ${type.name}: ${error}`);
    return error;
  }
  assert.fail("the call succeeded");
}

const directoryError = (pending: Promise<unknown>) => rejection(pending, DirectoryError);

describe("DirectoryError", () => {
  test("names the field of a radius without a point", async () => {
    const error = await directoryError(search(anonymous, { radius_km: 5 }));

    assert.equal(error.status, 400);
    assert.equal(error.code, "validation_error");
    assert.deepEqual(Object.keys(error.fieldErrors), ["radius_km"]);
    assert.match(error.fieldErrors.radius_km![0]!, /lat and lon/);
    assert.equal(error.retryAfter, null);
  });

  test("names the field of a radius beyond the API's limit", async () => {
    const error = await directoryError(
      searchNearby(anonymous, { position: devicePosition, radiusKm: 5000 }),
    );

    assert.equal(error.status, 400);
    assert.deepEqual(Object.keys(error.fieldErrors), ["radius_km"]);
    assert.match(error.fieldErrors.radius_km![0]!, /1000/);
    assert.ok(error.message.length > 0);
  });

  test("names the fields of a bad ad body by their path", async () => {
    const key = process.env.DIRECTORY_PORTAL_KEY;
    const portal = createDirectoryClient({ baseUrl: directoryUrl, key });
    const body = {
      kind: "offer",
      title: "Off the map",
      body: "x",
      category: "home.repairs",
      location: { lat: 91, lon: 0 },
    };

    // A body the types refuse on purpose (no member, latitude 91): the server must too.
    const error = await directoryError(
      unwrap(
        portal.PUT("/v1/ads/{ad_ref}", {
          params: { path: { ad_ref: "off-the-map" } },
          body: body as never,
        }),
      ),
    );

    assert.equal(error.status, 400);
    assert.ok(error.fieldErrors["location.lat"]?.length, JSON.stringify(error.fieldErrors));
  });

  test("says what is not found", async () => {
    const error = await directoryError(
      unwrap(
        anonymous.GET("/v1/ads/{ad_ref}", {
          params: { path: { ad_ref: "00000000-0000-4000-8000-000000000000" } },
        }),
      ),
    );

    assert.equal(error.status, 404);
    assert.equal(error.code, "not_found");
  });

  test("carries Retry-After in seconds when searches are rate limited", async () => {
    const limited = createDirectoryClient({ baseUrl: rateLimitedUrl, timeoutMs: 10_000 });
    const query = { lat: seed.point.lat, lon: seed.point.lon, limit: 1 };

    // A few hours' worth at most: the limit is a few searches an hour.
    let refusal: DirectoryError | undefined;
    for (let attempt = 0; attempt < 20 && refusal === undefined; attempt++) {
      refusal = await search(limited, query).then(
        () => undefined,
        (error: unknown) => {
          if (error instanceof DirectoryError) return error;
          throw error;
        },
      );
    }

    assert.ok(refusal, "never rate limited");
    assert.equal(refusal.status, 429);
    assert.equal(refusal.code, "rate_limited");
    assert.ok(
      refusal.retryAfter !== null && refusal.retryAfter > 0 && refusal.retryAfter <= 3600,
      `${refusal.retryAfter}`,
    );
  });
});

describe("timeoutMs", () => {
  /** A server on 127.0.0.1 that takes requests and never answers them. */
  async function silentServer() {
    const received: IncomingMessage[] = [];
    const server = createServer((request) => received.push(request));
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    return {
      url: `http://127.0.0.1:${port}`,
      received,
      /** Resolves when the server has a request (however busy the machine). */
      requested: once(server, "request"),
      close: () => {
        server.closeAllConnections();
        server.close();
      },
    };
  }

  // Bounded, so that a client that does not give up fails here rather than hangs.
  const bounded = { timeout: 5_000 };

  test("aborts a request the server does not answer", bounded, async () => {
    const silent = await silentServer();
    try {
      const client = createDirectoryClient({ baseUrl: silent.url, timeoutMs: 200 });
      const started = performance.now();

      await assert.rejects(search(client, {}), { name: "TimeoutError" });

      const elapsedMs = performance.now() - started;
      assert.ok(elapsedMs >= 190 && elapsedMs < 2000, `gave up after ${elapsedMs} ms`);
      assert.equal(silent.received.length, 1);
      assert.equal(silent.received[0]?.url?.split("?")[0], "/v1/search");
    } finally {
      silent.close();
    }
  });

  test("leaves the caller's own signal in force", bounded, async () => {
    const silent = await silentServer();
    try {
      const client = createDirectoryClient({ baseUrl: silent.url, timeoutMs: 60_000 });

      const controller = new AbortController();
      const pending = search(client, {}, { signal: controller.signal });
      // Once the request is out, not after a fixed delay: on a loaded machine it may not be.
      await silent.requested;
      controller.abort();

      await assert.rejects(pending, { name: "AbortError" });
      assert.equal(silent.received.length, 1);
    } finally {
      silent.close();
    }
  });

  test("must be a positive number", () => {
    assert.throws(() => createDirectoryClient({ baseUrl: directoryUrl, timeoutMs: 0 }), RangeError);
  });

  test("may be a fraction of a millisecond, as seconds * 1000 often is", async () => {
    const timeoutMs = 0.1 * 3 * 10_000; // 3000.0000000000005

    const client = createDirectoryClient({ baseUrl: directoryUrl, timeoutMs });
    const page = await search(client, { lat: seed.point.lat, lon: seed.point.lon, limit: 1 });

    assert.equal(page.hits.length, 1);
  });

  test("refuses a delay longer than timers keep, which would abort every request at once", () => {
    // Node fires AbortSignal.timeout after 1 ms beyond 2**31 - 1 ms (about 24.8 days).
    const thirtyDaysMs = 30 * 24 * 3600 * 1000;

    assert.throws(
      () => createDirectoryClient({ baseUrl: directoryUrl, timeoutMs: thirtyDaysMs }),
      RangeError,
    );
  });
});

describe("an answer that is not the API's", () => {
  /** A gateway on 127.0.0.1 in front of nothing, answering every request the same way. */
  async function gateway(status: number, headers: Record<string, string>, body: string) {
    const server = createServer((_request, response) => {
      response.writeHead(status, headers);
      response.end(body);
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    return {
      client: createDirectoryClient({ baseUrl: `http://127.0.0.1:${port}`, timeoutMs: 5_000 }),
      close: () => {
        server.closeAllConnections();
        server.close();
      },
    };
  }

  test("rejects a success that is not JSON, a proxy's page, naming the request", async () => {
    const page = "<html><body><h1>Welcome to nginx!</h1></body></html>";
    const proxy = await gateway(200, { "Content-Type": "text/html" }, page);
    try {
      const error = await rejection(search(proxy.client, { q: "bike" }), AnswerNotUnderstood);

      assert.equal(error.method, "GET");
      assert.equal(error.path, "/v1/search");
      assert.equal(error.status, 200);
      assert.equal(error.body, page);
      assert.match(error.message, /^GET \/v1\/search: answer not understood .*text\/html/);
    } finally {
      proxy.close();
    }
  });

  test("rejects an empty success where data is due", async () => {
    // With a length of 0, and chunked: openapi-fetch reads each as "no data".
    const lengths: Record<string, string>[] = [{ "Content-Length": "0" }, {}];
    for (const headers of lengths) {
      const empty = await gateway(200, { "Content-Type": "application/json", ...headers }, "");
      try {
        const error = await rejection(search(empty.client, {}), AnswerNotUnderstood);

        assert.equal(error.body, "", JSON.stringify(headers));
        assert.match(error.message, /an empty body/);
      } finally {
        empty.close();
      }
    }
  });

  test("takes a 204 as the success without a body that it is", async () => {
    const noContent = await gateway(204, {}, "");
    try {
      const deleted = await unwrap(
        noContent.client.DELETE("/v1/ads/{ad_ref}", { params: { path: { ad_ref: "a-1" } } }),
      );

      assert.equal(deleted, undefined);
    } finally {
      noContent.close();
    }
  });

  test("stops paging at a cursor given before, rather than read the same pages for ever", async () => {
    // A cache in front of the directory answering the first page whatever the cursor.
    const page = JSON.stringify({ hits: [], next_cursor: "c1", facets: null });
    const cache = await gateway(200, { "Content-Type": "application/json" }, page);
    try {
      const pages = async () => {
        for await (const _ of searchPages(cache.client, { q: "bike" }));
      };
      const hits = async () => {
        for await (const _ of searchAll(cache.client, { q: "bike" }, { max: 10 }));
      };
      for (const walk of [pages, hits]) {
        const error = await rejection(walk(), AnswerNotUnderstood);

        assert.equal(error.path, "/v1/search");
        assert.match(error.message, /given before/);
      }
    } finally {
      cache.close();
    }
  });

  test("keeps a gateway's own JSON body as the text received", async () => {
    const text = '{"message":"API rate limit exceeded"}';
    const limiting = await gateway(429, { "Content-Type": "application/json" }, text);
    try {
      const error = await directoryError(search(limiting.client, {}));

      assert.equal(error.status, 429);
      assert.equal(error.code, "http_429");
      assert.equal(error.body, text);
      assert.match(error.message, /API rate limit exceeded/);
      assert.deepEqual(error.fieldErrors, {});
    } finally {
      limiting.close();
    }
  });

  test("names no field after an errors member that is not the envelope's map", async () => {
    const body = JSON.stringify({ code: 400, message: "Bad request", errors: "bad" });
    const odd = await gateway(400, { "Content-Type": "application/json" }, body);
    try {
      const error = await directoryError(search(odd.client, {}));

      assert.equal(error.message, "Bad request");
      assert.deepEqual(error.fieldErrors, {});
    } finally {
      odd.close();
    }
  });

  test("reads a Retry-After that is neither seconds nor an HTTP date as unknown, not 0", async () => {
    for (const retryAfter of ["soon 5", "1.5", "-1"]) {
      const limiting = await gateway(429, { "Retry-After": retryAfter }, "slow down");
      try {
        const error = await directoryError(search(limiting.client, {}));

        assert.equal(error.retryAfter, null, `Retry-After: ${retryAfter}`);
      } finally {
        limiting.close();
      }
    }
  });

  test("reads a Retry-After in any of the HTTP date forms", async () => {
    const inAMinute = new Date(Math.ceil(Date.now() / 1000) * 1000 + 60_000).toUTCString();
    const expected = {
      [inAMinute]: 60, // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
      "Sunday, 06-Nov-94 08:49:37 GMT": 0, // obsolete RFC 850, past: at once
      "Sun Nov  6 08:49:37 1994": 0, // obsolete asctime, past
    };
    for (const [retryAfter, seconds] of Object.entries(expected)) {
      const limiting = await gateway(429, { "Retry-After": retryAfter }, "");
      try {
        const error = await directoryError(search(limiting.client, {}));

        assert.ok(
          error.retryAfter !== null && Math.abs(error.retryAfter - seconds) <= 2,
          `Retry-After: ${retryAfter} read as ${error.retryAfter}`,
        );
      } finally {
        limiting.close();
      }
    }
  });
});
