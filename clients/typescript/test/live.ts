/**
 * The directory these tests run against, and what was seeded into it: both come from
 * tests/clients/test_typescript.py, which serves the app on 127.0.0.1 and seeds it through
 * the API. Run the tests through it (`.venv/bin/pytest tests/clients/test_typescript.py`).
 */
import { readFileSync } from "node:fs";

export interface SeededAd {
  id: string;
  distance_km: number;
  kind: "offer" | "want";
  lat: number;
  lon: number;
}

export interface Seed {
  point: { lat: number; lon: number };
  /** The public ads around the point, nearest first. */
  public: SeededAd[];
  portal_only_id: string;
  hidden_id: string;
  far: { id: string; distance_km: number };
  pages_of_5: number;
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through tests/clients/test_typescript.py`);
  }
  return value;
}

export const directoryUrl = required("DIRECTORY_URL");
export const portalKey = required("DIRECTORY_PORTAL_KEY");
/** The same directory with an anonymous search limit of a few per hour. */
export const rateLimitedUrl = required("DIRECTORY_RATE_LIMITED_URL");
export const seed: Seed = JSON.parse(readFileSync(required("DIRECTORY_SEED_FILE"), "utf8"));

/** The seeded point in the shape of a browser's GeolocationPosition.coords. */
export const devicePosition = {
  latitude: seed.point.lat,
  longitude: seed.point.lon,
  accuracy: null,
};

export const ids = (items: { id?: string }[] | undefined): (string | undefined)[] =>
  (items ?? []).map((item) => item.id);
