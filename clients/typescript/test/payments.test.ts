import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ledgerUrlProblem,
  NotPayable,
  paidOn,
  paymentOf,
  sameLedger,
  type Schema,
} from "@commons-directory/client";

/** A payment block as the directory shows it. */
const block: Schema<"Payment"> = {
  protocol: "credit-commons",
  ledger_url: "https://ledger.example.org/",
  node: "lyon-sel",
  payee: "m-4821",
  currencies: ["sel-lyon:GRAIN", "HOUR"],
  price: { amount: "12.5000", currency: "HOUR", unit: "hour" },
};
const offer = { kind: "offer" as const, payment: block };

describe("paymentOf", () => {
  test("gives an offer's payment block", () => {
    assert.deepEqual(paymentOf(offer), block);
  });

  test("refuses an ad without one, naming why", () => {
    assert.throws(() => paymentOf({ kind: "offer", payment: null }), NotPayable);
  });

  test("refuses a want: its advertiser is the one who pays", () => {
    assert.throws(() => paymentOf({ kind: "want", payment: block }), /this ad is a want/);
  });

  test("refuses a block that contradicts itself", () => {
    assert.throws(() => paymentOf({ ...offer, payment: { ...block, payee: "" } }), /no payee/);
    assert.throws(
      () => paymentOf({ ...offer, payment: { ...block, currencies: [] } }),
      /accepts no currency/,
    );
    const price = { amount: "3", currency: "EUR", unit: "hour" as const };
    assert.throws(() => paymentOf({ ...offer, payment: { ...block, price } }), /price is in EUR/);
    assert.throws(
      () => paymentOf({ ...offer, payment: { ...block, node: "lyon\u001b[8m" } }),
      /node holds control characters/,
    );
  });

  for (const [url, problem] of [
    ["https://ledger.example.org/cc?tenant=lyon", "query"],
    ["https://ledger.example.org/#top", "fragment"],
    ["http://ledger.example.org/", "http to another machine"],
    ["http://203.0.113.7:8080/", "http to another machine"],
    ["https://alice:secret@ledger.example.org/", "user name"],
    ["ftp://ledger.example.org/", "absolute https"],
    ["ledger.example.org", "absolute https"],
    ["https://ledger.example.org/a b", "spaces"],
    ["https://l\u00e9dger.example.org/", "non-ASCII"],
    ["https://ledger.example.org\\@evil.example/", "backslash"],
  ] as const) {
    test(`refuses a ledger URL the payer's key must not go to: ${url}`, () => {
      assert.match(ledgerUrlProblem(url) ?? "", new RegExp(problem));
      assert.throws(
        () => paymentOf({ ...offer, payment: { ...block, ledger_url: url } }),
        NotPayable,
      );
    });
  }

  for (const url of [
    "https://ledger.example.org/cc/",
    "http://localhost:8000",
    "http://[::1]:9/",
    "http://127.0.0.1:9",
  ]) {
    test(`takes ${url}`, () => {
      assert.equal(ledgerUrlProblem(url), null);
    });
  }
});

describe("sameLedger and paidOn", () => {
  test("a ledger URL spelt otherwise is the same ledger", () => {
    assert.ok(sameLedger("https://ledger.example.org/", "HTTPS://Ledger.Example.org:443"));
    assert.ok(sameLedger("https://ledger.example.org/cc", "https://ledger.example.org/cc/"));
  });

  test("another host, port, scheme or path is another ledger", () => {
    for (const other of [
      "https://ledger.example.net/",
      "https://ledger.example.org:8443/",
      "http://ledger.example.org/",
      "https://ledger.example.org/cc",
    ]) {
      assert.ok(!sameLedger("https://ledger.example.org/", other), other);
    }
  });

  test("an ad paid on another ledger than the credentials are for is refused", () => {
    assert.deepEqual(paidOn(offer, "https://ledger.example.org"), block);
    assert.throws(
      () => paidOn(offer, "https://ledger.example.net"),
      /they are not sent to another ledger/,
    );
  });
});
