import { type DirectoryClient, unwrap } from "./client.js";
import { AnswerNotUnderstood } from "./errors.js";
import type { components, paths } from "./schema.js";

/** Every parameter of GET /v1/search (lists such as `currency` are comma-separated). */
export type SearchQuery = NonNullable<paths["/v1/search"]["get"]["parameters"]["query"]>;
/** The parameters that narrow a search, the place and the paging aside. */
export type SearchFilters = Omit<
  SearchQuery,
  "lat" | "lon" | "radius_km" | "bbox" | "format" | "cursor"
>;
export type SearchPage = components["schemas"]["SearchPage"];
export type SearchHit = components["schemas"]["SearchHit"];
export type GeoJSONPage = components["schemas"]["GeoJSONPage"];
export type GeoJSONFeature = components["schemas"]["GeoJSONFeature"];

// The API's own limits (openapi.yaml: the maximum of radius_km and of limit).
export const MAX_RADIUS_KM = 1000;
export const MAX_PAGE_SIZE = 100;

/** Where the device is: `GeolocationPosition.coords` of a browser or of React Native fits. */
export interface DevicePosition {
  latitude: number;
  longitude: number;
  /** Metres: the device is somewhere within this distance of latitude/longitude. */
  accuracy?: number | null;
}

export interface NearbySearch extends SearchFilters {
  position: DevicePosition;
  /** Find ads within this distance of the device (the API allows up to 1000 km). */
  radiusKm: number;
  /** next_cursor of the previous page of the same search. */
  cursor?: string | null;
}

export interface RequestOptions {
  /** Aborts the request(s), e.g. when a screen closes. */
  signal?: AbortSignal;
}

/**
 * The search query for ads around the device, nearest first (unless `sort` says otherwise).
 * The circle is widened by the position's accuracy: the device may be anywhere within it,
 * and the ads within radiusKm of where it really is must not be missed. The widening alone
 * never takes the radius past the API's limit.
 */
export function nearbyQuery({ position, radiusKm, ...filters }: NearbySearch): SearchQuery {
  const accuracyKm = (position.accuracy ?? 0) / 1000;
  const radius =
    radiusKm > MAX_RADIUS_KM ? radiusKm : Math.min(radiusKm + accuracyKm, MAX_RADIUS_KM);
  return {
    sort: "distance",
    ...filters,
    lat: position.latitude,
    lon: position.longitude,
    radius_km: radius,
  };
}

/** One page of search results. */
export async function search(
  client: DirectoryClient,
  query: SearchQuery,
  options: RequestOptions = {},
): Promise<SearchPage> {
  return unwrap(
    client.GET("/v1/search", {
      params: { query: { ...query, format: "json" } },
      signal: options.signal,
    }),
  );
}

/** One page of the ads around the device, nearest first, each with its distance_km. */
export async function searchNearby(
  client: DirectoryClient,
  nearby: NearbySearch,
  options: RequestOptions = {},
): Promise<SearchPage> {
  return search(client, nearbyQuery(nearby), options);
}

/**
 * The pages of a search, one request each, following next_cursor to the last page. The
 * directory's cursors only move on: a page whose next_cursor was given before (a cache or
 * proxy in front of it answering the first page whatever the cursor) rejects with an
 * AnswerNotUnderstood, before its hits, rather than lead to the same pages without end.
 */
export async function* searchPages(
  client: DirectoryClient,
  query: SearchQuery,
  options: RequestOptions = {},
): AsyncGenerator<SearchPage, void, undefined> {
  let cursor = query.cursor ?? null;
  const followed = new Set(cursor === null ? [] : [cursor]);
  do {
    const page = await search(client, { ...query, cursor }, options);
    cursor = page.next_cursor ?? null;
    if (cursor !== null && followed.has(cursor)) {
      throw new AnswerNotUnderstood({
        method: "GET",
        path: "/v1/search",
        status: 200,
        contentType: "application/json",
        body: JSON.stringify(page),
        cause: undefined,
        reason: "a page's next_cursor was given before: following it would never end",
      });
    }
    if (cursor !== null) followed.add(cursor);
    yield page;
  } while (cursor !== null);
}

/**
 * The hits of a search across its pages, at most `max` of them: a bound the caller
 * chooses, since a search without a radius may match every ad in the world.
 */
export async function* searchAll(
  client: DirectoryClient,
  query: SearchQuery,
  options: RequestOptions & { max: number },
): AsyncGenerator<SearchHit, void, undefined> {
  const { max, ...requestOptions } = options;
  if (!(Number.isInteger(max) && max > 0))
    throw new RangeError(`max must be a positive integer, not ${max}`);
  // Without a page size of the caller's, as few requests as the API allows.
  const limit = query.limit ?? Math.min(max, MAX_PAGE_SIZE);
  let yielded = 0;
  for await (const page of searchPages(client, { ...query, limit }, requestOptions)) {
    for (const hit of page.hits ?? []) {
      yield hit;
      if (++yielded === max) return;
    }
  }
}

/**
 * One page as a GeoJSON FeatureCollection, for map libraries (MapLibre, Leaflet):
 * each feature's geometry is the ad's published point, [lon, lat]; null for hidden ads.
 * Follow `next_cursor` by passing it as `cursor`.
 */
export async function searchGeoJSON(
  client: DirectoryClient,
  query: SearchQuery,
  options: RequestOptions = {},
): Promise<GeoJSONPage> {
  const page = await unwrap(
    client.GET("/v1/search", {
      params: { query: { ...query, format: "geojson" } },
      signal: options.signal,
    }),
  );
  // The client types answers as their application/json schema; format=geojson answers
  // the application/geo+json one (both are in openapi.yaml).
  return page as unknown as GeoJSONPage;
}
