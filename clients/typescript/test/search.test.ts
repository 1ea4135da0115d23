import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  createDirectoryClient,
  DirectoryError,
  nearbyQuery,
  searchAll,
  searchGeoJSON,
  searchNearby,
  searchPages,
  unwrap,
  unwrapIfModified,
  type Schema,
  type SearchHit,
} from "@commons-directory/client";

import { devicePosition, directoryUrl, ids, portalKey, seed } from "./live.js";

const anonymous = createDirectoryClient({ baseUrl: directoryUrl, timeoutMs: 10_000 });
const portal = createDirectoryClient({ baseUrl: directoryUrl, key: portalKey, timeoutMs: 10_000 });
const allPublicIds = seed.public.map((ad) => ad.id);
/** An ad with the fields the API requires (and a location: privacy is approximate by default). */
const minimalAd = {
  kind: "offer",
  title: "Reserved characters",
  body: "Anything",
  category: "home.repairs",
  member: "m-1",
  location: { lat: seed.point.lat, lon: seed.point.lon },
} satisfies Schema<"AdPut">;
const within = (km: number) => seed.public.filter((ad) => ad.distance_km <= km).map((ad) => ad.id);

describe("searchNearby", () => {
  test("returns the ads around the device nearest first, each with its distance", async () => {
    const page = await searchNearby(anonymous, {
      position: devicePosition,
      radiusKm: 20,
      limit: 100,
    });

    assert.deepEqual(ids(page.hits), allPublicIds);
    assert.equal(page.next_cursor, null);
    page.hits?.forEach((hit, index) => {
      const seeded = seed.public[index]!;
      assert.ok(
        Math.abs((hit.distance_km ?? Number.NaN) - seeded.distance_km) <= 0.1,
        `${hit.title}: distance_km ${hit.distance_km}, expected about ${seeded.distance_km}`,
      );
    });
  });

  test("leaves out the ads beyond the radius, and finds them with a wider one", async () => {
    const near = await searchNearby(anonymous, { position: devicePosition, radiusKm: 1 });
    const wide = await searchNearby(anonymous, {
      position: devicePosition,
      radiusKm: 100,
      limit: 100,
    });

    assert.deepEqual(ids(near.hits), within(1));
    assert.deepEqual(ids(wide.hits), [...allPublicIds, seed.far.id]);
  });

  test("widens the circle by the position's accuracy", async () => {
    const poorFix = { ...devicePosition, accuracy: 1000 }; // metres

    const page = await searchNearby(anonymous, { position: poorFix, radiusKm: 1 });

    assert.equal(nearbyQuery({ position: poorFix, radiusKm: 1 }).radius_km, 2);
    assert.deepEqual(ids(page.hits), within(2));
  });

  test("passes the filters on", async () => {
    const page = await searchNearby(anonymous, {
      position: devicePosition,
      radiusKm: 20,
      kind: "want",
      currency: "EUR,HOUR",
      limit: 100,
    });

    const wants = seed.public.filter((ad) => ad.kind === "want").map((ad) => ad.id);
    assert.ok(wants.length > 0);
    assert.deepEqual(ids(page.hits), wants);
  });

  test("never shows a hidden ad, which stays readable by its id without a location", async () => {
    const page = await searchNearby(portal, {
      position: devicePosition,
      radiusKm: 1000,
      limit: 100,
    });
    const hidden = await unwrap(
      anonymous.GET("/v1/ads/{ad_ref}", { params: { path: { ad_ref: seed.hidden_id } } }),
    );

    assert.ok(!ids(page.hits).includes(seed.hidden_id));
    assert.equal(hidden.id, seed.hidden_id);
    assert.equal(hidden.location, null);
  });
});

describe("a portal key", () => {
  test("finds the portal's own portal-only ad, which anonymous searches do not", async () => {
    const query = nearbyQuery({ position: devicePosition, radiusKm: 20, limit: 100 });

    const asPortal = ids((await unwrap(portal.GET("/v1/search", { params: { query } }))).hits);
    const asAnyone = ids((await unwrap(anonymous.GET("/v1/search", { params: { query } }))).hits);

    assert.ok(asPortal.includes(seed.portal_only_id));
    assert.ok(!asAnyone.includes(seed.portal_only_id));
    assert.deepEqual(new Set(asPortal), new Set([...asAnyone, seed.portal_only_id]));
  });

  test("that cannot be sent is refused at once, without showing it", () => {
    for (const key of [`${portalKey}\ncdir_next`, `${portalKey}\u0000`, `${portalKey}\u200b`, ""]) {
      assert.throws(
        () => createDirectoryClient({ baseUrl: directoryUrl, key }),
        (error: Error) =>
          error instanceof TypeError &&
          /key/.test(error.message) &&
          !error.message.includes(portalKey),
      );
    }
  });

  test("read with its line end from a file still works", async () => {
    const fromFile = createDirectoryClient({ baseUrl: directoryUrl, key: `${portalKey}\n` });

    const own = await unwrap(fromFile.GET("/v1/portals/me"));

    assert.ok(own.slug);
  });

  test("does not make the portal-only ad public by its id", async () => {
    const read = unwrap(
      anonymous.GET("/v1/ads/{ad_ref}", { params: { path: { ad_ref: seed.portal_only_id } } }),
    );

    await assert.rejects(read, (error) => error instanceof DirectoryError && error.status === 404);
  });
});

describe("paging", () => {
  test("searchPages follows next_cursor and returns each ad exactly once, in order", async () => {
    const pages = [];
    for await (const page of searchPages(
      anonymous,
      nearbyQuery({ position: devicePosition, radiusKm: 20, limit: 5 }),
    )) {
      pages.push(page);
    }

    const pagedIds = pages.flatMap((page) => ids(page.hits));
    assert.equal(pages.length, seed.pages_of_5);
    assert.ok(pages.slice(0, -1).every((page) => page.hits?.length === 5 && page.next_cursor));
    assert.equal(pages.at(-1)?.next_cursor, null);
    assert.deepEqual(pagedIds, allPublicIds);
  });

  test("searchAll yields the hits across pages, and stops at max", async () => {
    const query = nearbyQuery({ position: devicePosition, radiusKm: 20, limit: 4 });
    const collect = async (max: number) => {
      const hits: SearchHit[] = [];
      for await (const hit of searchAll(anonymous, query, { max })) hits.push(hit);
      return ids(hits);
    };

    assert.deepEqual(await collect(1000), allPublicIds);
    assert.deepEqual(await collect(9), allPublicIds.slice(0, 9));
  });

  test("searchAll refuses a max that is not a positive whole number", async () => {
    const walk = async () => {
      for await (const _hit of searchAll(anonymous, {}, { max: 0 })) break;
    };

    await assert.rejects(walk, RangeError);
  });
});

describe("searchGeoJSON", () => {
  test("answers a FeatureCollection whose points are the ads' coordinates", async () => {
    const page = await searchGeoJSON(
      anonymous,
      nearbyQuery({ position: devicePosition, radiusKm: 20, limit: 100 }),
    );

    assert.equal(page.type, "FeatureCollection");
    assert.deepEqual(ids(page.features), allPublicIds);
    page.features?.forEach((feature, index) => {
      const seeded = seed.public[index]!;
      assert.equal(feature.type, "Feature");
      assert.equal(feature.geometry?.type, "Point");
      // Exact privacy: the published point is the one the portal gave, [lon, lat].
      assert.deepEqual(feature.geometry?.coordinates, [seeded.lon, seeded.lat]);
      assert.equal(feature.properties?.id, seeded.id);
      assert.equal(typeof feature.properties?.distance_km, "number");
    });
  });

  test("pages with next_cursor like the JSON search", async () => {
    const query = nearbyQuery({ position: devicePosition, radiusKm: 20, limit: 20 });

    const first = await searchGeoJSON(anonymous, query);
    const second = await searchGeoJSON(anonymous, { ...query, cursor: first.next_cursor });

    assert.ok(first.next_cursor);
    assert.deepEqual([...ids(first.features), ...ids(second.features)], allPublicIds);
    assert.equal(second.next_cursor, null);
  });
});

describe("the typed client", () => {
  test("reads an ad, the categories and the currencies", async () => {
    const nearest = seed.public[0]!;

    const ad = await unwrap(
      anonymous.GET("/v1/ads/{ad_ref}", { params: { path: { ad_ref: nearest.id } } }),
    );
    const { categories } = await unwrap(anonymous.GET("/v1/categories"));
    const { currencies } = await unwrap(
      anonymous.GET("/v1/currencies", { params: { query: { kind: "time" } } }),
    );

    assert.equal(ad.id, nearest.id);
    assert.deepEqual(ad.location, { lat: nearest.lat, lon: nearest.lon });
    const group = categories?.find((category) => category.code === ad.category?.split(".")[0]);
    assert.ok(
      group?.children?.some((child) => child.code === ad.category),
      `${ad.category}`,
    );
    assert.ok(currencies?.length && currencies.every((currency) => currency.kind === "time"));
    assert.ok(currencies.some((currency) => currency.code === "HOUR"));
  });

  test("takes an ad with only its required fields, as the API does", async () => {
    // Compiles only if the fields with a default (tags, privacy, currencies, ...) are
    // optional in the types, as they are in the API.
    const ad: Schema<"AdPut"> = { ...minimalAd, title: "Only what is required" };

    const created = await unwrap(
      portal.PUT("/v1/ads/{ad_ref}", { params: { path: { ad_ref: "minimal" } }, body: ad }),
    );

    assert.equal(created.privacy, "approximate");
    assert.deepEqual(created.tags, []);
    assert.equal(created.accepts_contact, true);
    await unwrap(portal.DELETE("/v1/ads/{ad_ref}", { params: { path: { ad_ref: "minimal" } } }));
  });

  test("sends a batch without the fields that have a default (op, replace)", async () => {
    const { results } = await unwrap(
      portal.POST("/v1/ads/batch", {
        body: { items: [{ external_id: "batched", ad: { ...minimalAd, title: "Batched" } }] },
      }),
    );

    assert.equal(results[0]?.status, "created", JSON.stringify(results));
    await unwrap(portal.DELETE("/v1/ads/{ad_ref}", { params: { path: { ad_ref: "batched" } } }));
  });

  test("sends an external id with reserved characters to the ad's own path", async () => {
    const externalId = "shop:bikes~2024.v1";
    const path = { params: { path: { ad_ref: externalId } } };

    const created = await unwrap(portal.PUT("/v1/ads/{ad_ref}", { ...path, body: minimalAd }));
    const own = await unwrap(
      portal.GET("/v1/portals/me/ads/{external_id}", {
        params: { path: { external_id: externalId } },
      }),
    );
    await unwrap(portal.DELETE("/v1/ads/{ad_ref}", path));

    assert.equal(created.external_id, externalId);
    assert.equal(own.id, created.id);
  });

  test("reads an own ad again only when it changed (If-None-Match, 304)", async () => {
    const path = { params: { path: { ad_ref: "conditional" } } };
    const ownPath = { external_id: "conditional" };
    await unwrap(portal.PUT("/v1/ads/{ad_ref}", { ...path, body: minimalAd }));
    const read = await portal.GET("/v1/portals/me/ads/{external_id}", {
      params: { path: ownPath },
    });
    const etag = read.response.headers.get("ETag")!;
    const again = () =>
      portal.GET("/v1/portals/me/ads/{external_id}", {
        params: { path: ownPath, header: { "If-None-Match": etag } },
      });

    const unchanged = await unwrapIfModified(again());
    // unwrap's type promises data: a 304 there is refused, not passed off as an ad.
    const refused = await unwrap(again()).then(
      () => undefined,
      (error: unknown) => error,
    );
    await unwrap(portal.PUT("/v1/ads/{ad_ref}", { ...path, body: { ...minimalAd, title: "New" } }));
    const changed = await unwrapIfModified(again());
    await unwrap(portal.DELETE("/v1/ads/{ad_ref}", path));

    assert.ok(etag);
    assert.equal(unchanged, undefined);
    assert.ok(refused instanceof DirectoryError && refused.status === 304, String(refused));
    assert.equal(changed?.title, "New");
  });

  test("refuses a path parameter that a URL resolves away, sending nothing", async () => {
    const sent: string[] = [];
    const recording = createDirectoryClient({
      baseUrl: directoryUrl,
      key: portalKey,
      fetch: (input, init) => {
        sent.push(input instanceof Request ? `${input.method} ${input.url}` : String(input));
        return fetch(input, init);
      },
    });

    for (const value of [".", "..", ""]) {
      // Else DELETE /v1/ads/.. would go to DELETE /v1/, expire "." to POST /v1/ads/expire.
      await assert.rejects(
        unwrap(recording.DELETE("/v1/ads/{ad_ref}", { params: { path: { ad_ref: value } } })),
        (error: Error) => error instanceof RangeError && /ad_ref/.test(error.message),
      );
      await assert.rejects(
        unwrap(recording.POST("/v1/ads/{ad_ref}/expire", { params: { path: { ad_ref: value } } })),
        (error: Error) => error instanceof RangeError && /ad_ref/.test(error.message),
      );
    }

    assert.deepEqual(sent, []);
  });

  test("sends the portal key for portal operations", async () => {
    const own = await unwrap(portal.GET("/v1/portals/me"));
    const refused = unwrap(anonymous.GET("/v1/portals/me"));

    assert.ok(own.slug);
    await assert.rejects(
      refused,
      (error) => error instanceof DirectoryError && error.status === 401,
    );
  });
});
