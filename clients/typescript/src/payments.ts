import type { components } from "./schema.js";

/**
 * The `payment` block of an ad: where and whom to pay. The directory only says this; the
 * payment is made on the ledger by the payer's own client, with the payer's own key, which
 * must go to the payer's own ledger and no other: any portal may name any ledger, and one
 * naming its own would collect the keys of whoever paid its ads. The same checks as the
 * Python client's (directory_client.payments, ledger_for).
 */
export type Payment = components["schemas"]["Payment"];

/** What `paymentOf` reads of an ad: a PublicAd or a SearchHit fits. */
export interface PayableAd {
  kind?: string;
  payment?: Payment | null;
}

/**
 * The ad cannot be paid from here: no payment block (its portal has no ledger or the ad no
 * account), a want (its advertiser is the one who pays), a block that contradicts itself,
 * a ledger URL the payer's key must not be sent to, or another ledger than the payer's.
 */
export class NotPayable extends Error {
  override name = "NotPayable";
}

const DEFAULT_PORTS: Record<string, string> = { "https:": "443", "http:": "80" };
const LOOPBACK_NAMES = new Set(["localhost"]);

/**
 * The ad's payment block, checked before anything is sent: throws NotPayable, saying why,
 * for an ad that cannot be paid from here.
 */
export function paymentOf(ad: PayableAd): Payment {
  const payment = ad.payment;
  if (payment === undefined || payment === null) {
    throw new NotPayable("this ad cannot be paid: it has no payment block");
  }
  if (ad.kind === "want") {
    throw new NotPayable(
      "this ad is a want: its advertiser pays whoever answers it, so it is not paid from here",
    );
  }
  for (const name of ["protocol", "node", "payee"] as const) {
    // Shown to the payer: an escape sequence could rewrite what a terminal shows.
    if (/[\u0000-\u001f\u007f-\u009f]/.test(payment[name])) {
      throw new NotPayable(
        `this ad cannot be paid: its payment block's ${name} holds control characters`,
      );
    }
  }
  const problem = ledgerUrlProblem(payment.ledger_url);
  if (problem !== null) {
    throw new NotPayable(
      `this ad cannot be paid: its ledger_url ${JSON.stringify(payment.ledger_url)} ${problem}`,
    );
  }
  if (!payment.payee)
    throw new NotPayable("this ad cannot be paid: its payment block names no payee");
  if (payment.currencies.length === 0) {
    throw new NotPayable("this ad cannot be paid: its payment block accepts no currency");
  }
  if (payment.price && !payment.currencies.includes(payment.price.currency)) {
    throw new NotPayable(
      `this ad cannot be paid: its price is in ${payment.price.currency}, which it does not ` +
        `accept (${payment.currencies.join(", ")})`,
    );
  }
  return payment;
}

/**
 * The ad's payment block (see paymentOf), provided it is paid on the ledger at
 * `credentialsFor`, the one whose account and key the payer will use (sameLedger); throws
 * NotPayable otherwise, before anything is sent.
 */
export function paidOn(ad: PayableAd, credentialsFor: string): Payment {
  const payment = paymentOf(ad);
  if (!sameLedger(payment.ledger_url, credentialsFor)) {
    throw new NotPayable(
      `this ad is paid on the ledger at ${payment.ledger_url}, and the credentials are for ` +
        `${credentialsFor}: they are not sent to another ledger`,
    );
  }
  return payment;
}

/**
 * Whether two ledger URLs name one node, as the URL a request is sent to reads them: scheme
 * and host in any case, the default port written or not, a trailing slash or not.
 */
export function sameLedger(url: string, other: string): boolean {
  const [a, b] = [identity(url), identity(other)];
  return a !== null && b !== null && a === b;
}

function identity(url: string): string | null {
  let parsed: URL;
  try {
    parsed = new URL(url.trim());
  } catch {
    return null;
  }
  const port = parsed.port || DEFAULT_PORTS[parsed.protocol] || "";
  return JSON.stringify([
    parsed.protocol,
    parsed.hostname,
    port,
    parsed.pathname.replace(/\/+$/, ""),
  ]);
}

/**
 * Why the payer's key must not be sent to this ledger URL, or null: one that would carry it
 * in clear to another machine (http but to this one), that holds user info, or that paths
 * cannot be joined to (a query or a fragment). A backslash is refused too: URL parsers
 * disagree on it (browsers read it as a slash).
 */
export function ledgerUrlProblem(url: string): string | null {
  if (!/^[\x21-\x7e]*$/.test(url)) return "holds spaces, control or non-ASCII characters";
  if (url.includes("\\")) return "holds a backslash";
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return "is not an absolute https URL";
  }
  if (!["https:", "http:"].includes(parsed.protocol) || !parsed.hostname) {
    return "is not an absolute https URL";
  }
  if (parsed.username || parsed.password || url.split("/")[2]?.includes("@")) {
    return "holds a user name or password";
  }
  if (url.includes("?") || url.includes("#")) return "has a query or a fragment";
  if (parsed.protocol === "http:" && !isLoopback(parsed.hostname)) {
    return "uses http to another machine: the payer's key would travel in clear";
  }
  return null;
}

function isLoopback(hostname: string): boolean {
  if (LOOPBACK_NAMES.has(hostname)) return true;
  if (hostname === "[::1]") return true;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}
