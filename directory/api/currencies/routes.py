"""The currency registry: built-in codes and the community currencies of portals."""

from __future__ import annotations

from flask.views import MethodView

from directory.api.auth import BEARER_AUTH, require_portal
from directory.api.blueprint import Blueprint
from directory.api.currencies.schemas import (
    CurrencyArgsSchema,
    CurrencyCreateSchema,
    CurrencyListSchema,
    CurrencyPatchSchema,
    CurrencySchema,
)
from directory.api.db import transaction
from directory.api.errors import ErrorSchema
from directory.api.fields import CURRENCY_CODE
from directory.api.headers import LOCATION_HEADER, location_of
from directory.errors import NotFound
from directory.services import currencies
from directory.services.currencies import MAX_CURRENCIES_PER_PORTAL

blp = Blueprint("currencies", __name__, url_prefix="/v1", description="Currency registry")

CURRENCY_LOCATION = "Where the currency can be read (a path on this directory)"
CODE = {
    "in": "path",
    "name": "code",
    "required": True,
    "schema": {"type": "string", "pattern": CURRENCY_CODE.pattern},
    "description": "A currency code: EUR, HOUR, or a community code such as my-portal:TALENT",
}


@blp.route("/currencies")
class Currencies(MethodView):
    @blp.arguments(CurrencyArgsSchema, location="query")
    @blp.response(200, CurrencyListSchema)
    @blp.doc(operationId="listCurrencies")
    def get(self, args):
        """Every currency an ad may accept: ISO 4217, hours, gift, barter and community"""
        with transaction() as session:
            return {"currencies": currencies.list_currencies(session, **args)}

    @blp.arguments(CurrencyCreateSchema)
    @blp.response(201, CurrencySchema, headers=LOCATION_HEADER)
    @blp.alt_response(
        200,
        schema=CurrencySchema,
        headers={"Location": {**LOCATION_HEADER["Location"], "description": CURRENCY_LOCATION}},
        description="The portal had registered this currency already, identically: a "
        "registration sent again after its answer was lost; nothing changed",
    )
    @blp.alt_response(
        409,
        schema=ErrorSchema,
        description="The portal has registered that code already with other attributes, "
        f"or {MAX_CURRENCIES_PER_PORTAL} currencies (too_many_currencies)",
    )
    @blp.doc(operationId="registerCurrency", security=BEARER_AUTH)
    def post(self, data):
        """Register a community currency of the calling portal's ledger

        Its code is namespaced by the portal: TALENT registered by portal `brixton`
        becomes `brixton:TALENT`. A portal registers at most 20 (delete one it no longer
        uses to register another). The same registration sent again (its answer was
        lost) is answered 200 with the currency and changes nothing; the code sent again
        with another name, symbol or value is refused (409: change it with PATCH)."""
        with transaction() as session:
            portal = require_portal(session)
            registration = currencies.register_currency(session, portal_id=portal.id, **data)
        currency = registration.currency
        status = 201 if registration.created else 200
        return currency, status, location_of("currencies.CurrencyByCode", code=currency.code)


def _code(code: str) -> str:
    if not CURRENCY_CODE.fullmatch(code):
        raise NotFound(
            f"no currency with code {code!r}", field="code", details={"location": "path"}
        )
    return code


@blp.route("/currencies/<string:code>", parameters=[CODE])
class CurrencyByCode(MethodView):
    @blp.response(200, CurrencySchema)
    @blp.doc(operationId="getCurrency")
    def get(self, code: str):
        """Read one currency"""
        with transaction() as session:
            return currencies.get_currency(session, code=_code(code))

    @blp.arguments(CurrencyPatchSchema)
    @blp.response(200, CurrencySchema)
    @blp.doc(operationId="updateCurrency", security=BEARER_AUTH)
    def patch(self, changes, code: str):
        """Change the calling portal's community currency"""
        with transaction() as session:
            portal = require_portal(session)
            return currencies.update_currency(
                session, portal_id=portal.id, code=_code(code), changes=changes
            )

    @blp.response(204)
    @blp.alt_response(
        409, schema=ErrorSchema, description="Ads or portal defaults still use the currency"
    )
    @blp.doc(operationId="deleteCurrency", security=BEARER_AUTH)
    def delete(self, code: str):
        """Remove the calling portal's community currency, when nothing uses it

        Removing one of its codes that is not registered is harmless (204): a removal
        may be sent again after its answer was lost."""
        with transaction() as session:
            portal = require_portal(session)
            currencies.delete_currency(session, portal_id=portal.id, code=_code(code))
