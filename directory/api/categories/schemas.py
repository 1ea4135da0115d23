from __future__ import annotations

from marshmallow import Schema, fields


class CategoryChildSchema(Schema):
    code = fields.String(metadata={"example": "food.produce"})
    domain = fields.String(metadata={"description": "goods, services or other"})
    name = fields.String()


class CategorySchema(CategoryChildSchema):
    children = fields.List(fields.Nested(CategoryChildSchema))


class CategoryListSchema(Schema):
    categories = fields.List(fields.Nested(CategorySchema))
