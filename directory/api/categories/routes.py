"""The published category taxonomy."""

from __future__ import annotations

from flask.views import MethodView

from directory.api.blueprint import Blueprint
from directory.api.categories.schemas import CategoryListSchema
from directory.api.db import transaction
from directory.services import categories

blp = Blueprint("categories", __name__, url_prefix="/v1", description="Category taxonomy")


@blp.route("/categories")
class Categories(MethodView):
    @blp.response(200, CategoryListSchema)
    @blp.doc(operationId="listCategories")
    def get(self):
        """The category taxonomy: top-level groups, each with its children

        An ad names one code, a group (`food`) or a child (`food.produce`)."""
        with transaction() as session:
            return {"categories": categories.category_tree(session)}
