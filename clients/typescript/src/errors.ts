import type { components } from "./schema.js";

/** The body of every error the API answers: `{code, status, error, message, errors}`. */
export type ErrorEnvelope = components["schemas"]["Error"];

/**
 * Messages by field path, the location (query, json, path, headers) left out:
 * `{"radius_km": ["..."]}` for a search, `{"location.lat": ["..."]}` for an ad body.
 */
export type FieldErrors = Record<string, string[]>;

/** An answer of the API that is not a success, as the error envelope describes it. */
export class DirectoryError extends Error {
  override readonly name = "DirectoryError";
  /** The HTTP status, e.g. 400, 404, 429. */
  readonly status: number;
  /** The stable machine code (the envelope's `error`), e.g. "validation_error", "rate_limited". */
  readonly code: string;
  /** What went wrong, per field; empty when the error is not about a field. */
  readonly fieldErrors: FieldErrors;
  /** Seconds to wait before trying again (Retry-After, sent with 429); null when not said. */
  readonly retryAfter: number | null;
  /** The envelope as received, or the raw text when the body was not one. */
  readonly body: ErrorEnvelope | string | undefined;

  constructor(init: {
    status: number;
    code: string;
    message: string;
    fieldErrors?: FieldErrors;
    retryAfter?: number | null;
    body?: ErrorEnvelope | string;
  }) {
    super(init.message);
    this.status = init.status;
    this.code = init.code;
    this.fieldErrors = init.fieldErrors ?? {};
    this.retryAfter = init.retryAfter ?? null;
    this.body = init.body;
  }

  /** Builds the error from a failed response and the body openapi-fetch read from it. */
  static fromResponse(response: Response, body: unknown): DirectoryError {
    const retryAfter = parseRetryAfter(response.headers.get("Retry-After"));
    if (isEnvelope(body)) {
      return new DirectoryError({
        status: response.status,
        code: body.error ?? `http_${response.status}`,
        message: body.message ?? response.statusText,
        fieldErrors: flattenFieldErrors(body.errors),
        retryAfter,
        body,
      });
    }
    // A proxy or load balancer in front of the API may answer in its own format, JSON
    // (which openapi-fetch has parsed) or not: kept as the text received.
    const text =
      typeof body === "string"
        ? body || undefined
        : body === undefined
          ? undefined
          : JSON.stringify(body);
    return new DirectoryError({
      status: response.status,
      code: `http_${response.status}`,
      message: text ?? `${response.status} ${response.statusText}`.trim(),
      retryAfter,
      body: text,
    });
  }
}

// Enough of a proxy's page to recognise it; the whole of it is in `body`.
const BODY_SHOWN = 120;

/**
 * A success answer (2xx) that is not the JSON the API sends: a page of a proxy or load
 * balancer in front of it answering 200, or an empty body where data was due. Not a
 * DirectoryError: the API itself said nothing, and the request may or may not have reached it.
 */
export class AnswerNotUnderstood extends Error {
  override readonly name = "AnswerNotUnderstood";
  /** The request, e.g. "GET" and "/v1/search" (the query left out). */
  readonly method: string;
  readonly path: string;
  /** The HTTP status received, e.g. 200. */
  readonly status: number;
  /** The body as received. */
  readonly body: string;

  constructor(init: {
    method: string;
    path: string;
    status: number;
    contentType: string | null;
    body: string;
    cause: unknown;
    /** What is wrong with it, when it is the directory's JSON but cannot be followed. */
    reason?: string;
  }) {
    const received = init.body
      ? `${JSON.stringify(init.body.slice(0, BODY_SHOWN))}${init.body.length > BODY_SHOWN ? "..." : ""}`
      : "an empty body";
    super(
      `${init.method} ${init.path}: answer not understood ` +
        `(${init.reason ?? "not the directory's JSON"}): ` +
        `${init.status} ${init.contentType ?? "without a Content-Type"}, ${received}`,
      { cause: init.cause },
    );
    this.method = init.method;
    this.path = init.path;
    this.status = init.status;
    this.body = init.body;
  }
}

function isEnvelope(body: unknown): body is ErrorEnvelope {
  return typeof body === "object" && body !== null && "message" in body && "code" in body;
}

/** `{query: {radius_km: [...]}}` becomes `{radius_km: [...]}`; nested body fields are dotted. */
function flattenFieldErrors(errors: ErrorEnvelope["errors"]): FieldErrors {
  const flat: FieldErrors = {};
  const walk = (node: unknown, path: string[]): void => {
    if (Array.isArray(node)) {
      const key = path.join(".");
      flat[key] = [...(flat[key] ?? []), ...node.map(String)];
    } else if (typeof node === "object" && node !== null) {
      for (const [name, child] of Object.entries(node)) walk(child, [...path, name]);
    } else if (node !== undefined && node !== null) {
      walk([node], path);
    }
  };
  // Anything but the map the envelope promises (a gateway's own "errors") names no field.
  if (typeof errors !== "object" || errors === null || Array.isArray(errors)) return flat;
  for (const [location, fields] of Object.entries(errors)) {
    // A value straight under the top level (e.g. {"constraint": "..."}) is its own field.
    const isByField = typeof fields === "object" && fields !== null && !Array.isArray(fields);
    walk(fields, isByField ? [] : [location]);
  }
  return flat;
}

/**
 * Retry-After is either whole seconds or an HTTP date (RFC 9110, sections 10.2.3 and 5.6.7:
 * "Sun, 06 Nov 1994 08:49:37 GMT", or the obsolete "Sunday, 06-Nov-94 08:49:37 GMT" and
 * "Sun Nov  6 08:49:37 1994"). Anything else says nothing: null, never 0, which would tell
 * the caller to try again at once.
 */
function parseRetryAfter(header: string | null): number | null {
  const value = header?.trim() ?? "";
  if (/^\d+$/.test(value)) return Number(value);
  if (!HTTP_DATE.test(value)) return null;
  // Date.parse reads the three forms; the obsolete asctime one carries no zone but is GMT.
  const date = Date.parse(value.endsWith("GMT") ? value : `${value} GMT`);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

const HTTP_DATE =
  /^(?:[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT|[A-Z][a-z]+, \d{2}-[A-Z][a-z]{2}-\d{2} \d{2}:\d{2}:\d{2} GMT|[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2} \d{4})$/;
