"""The check against the node's OpenAPI file is real: it catches what the spec forbids."""

from __future__ import annotations

import json

import httpx

from tests.credit_commons import Exchange, spec_violations


def test_what_the_client_and_the_node_said_fits_the_corrected_spec(
    ledger, ad_for, key, recorder, spec
):
    paid = ledger.pay(ad_for("bob"), 1, "checked", payer="alice", auth=key("alice"))
    ledger.confirm(paid.uuid, user="bob", auth=key("bob"))
    ledger.statement("bob", user="bob", auth=key("bob"))

    paths = {(e.request.method, e.request.url.path.split("/")[1]) for e in recorder.exchanges}
    assert {
        ("GET", "workflows"),
        ("POST", "transaction"),
        ("PATCH", "transaction"),
        ("GET", "transaction"),
    } <= paths
    assert spec_violations(spec, recorder.exchanges) == []


def test_a_transaction_answer_the_spec_forbids_is_caught(ledger, ad_for, key, recorder, spec):
    paid = ledger.pay(ad_for("bob"), 1, "to tamper with", payer="alice", auth=key("alice"))
    original = next(
        e for e in recorder.exchanges if e.request.url.path == f"/transaction/full/{paid.uuid}"
    )
    body = json.loads(original.response.content)
    body["state"] = "half-paid"  # not a state the spec knows
    del body["version"]  # required

    tampered = httpx.Response(200, json=body, request=original.request)

    problems = spec_violations(spec, [Exchange(original.request, tampered)])
    assert len(problems) == 1 and problems[0].startswith("response 200 to GET")


def test_a_new_transaction_the_spec_forbids_is_caught(credit_commons_node, spec):
    request = httpx.Request(
        "POST",
        f"{credit_commons_node.url}/transaction",
        json={"payer": "alice", "payee": "bob", "quant": "ten", "type": "credit"},
    )

    problems = spec_violations(
        spec,
        [Exchange(request, httpx.Response(400, json={"class": "X", "node": "n"}, request=request))],
    )

    assert len(problems) == 1 and problems[0].startswith("request POST")


def test_the_spec_as_published_does_not_know_the_path_the_node_serves(
    credit_commons_node, key, spec
):
    # The published spec puts the uuid before the format; the corrected one (in use here)
    # follows the node, so the published order is what it now refuses.
    request = httpx.Request(
        "GET",
        f"{credit_commons_node.url}/transaction/00000000-0000-4000-8000-000000000000/full",
        headers={"cc-user": "alice", "cc-auth": key("alice")},
    )
    response = httpx.Response(200, json={}, request=request)

    assert spec_violations(spec, [Exchange(request, response)])
