"""Persistence: tables as SQLAlchemy models. Importing this package registers them all."""

from directory.models.ads import Ad, AdChange, AdKind, ChangeOp, PriceUnit, Visibility
from directory.models.categories import Category
from directory.models.currencies import Currency
from directory.models.portals import Ledger, LedgerProtocol, Portal, PortalKey, PortalStatus
from directory.models.relay import (
    Conversation,
    Delivery,
    DeliveryChannel,
    DeliveryState,
    Message,
    PortalBlock,
    Role,
)
from directory.models.search import SearchIndexPosition
from directory.models.sync import SyncSession, SyncSessionItem, SyncStatus

__all__ = [
    "Ad",
    "AdChange",
    "AdKind",
    "Category",
    "ChangeOp",
    "Conversation",
    "Currency",
    "Delivery",
    "DeliveryChannel",
    "DeliveryState",
    "Ledger",
    "LedgerProtocol",
    "Message",
    "Portal",
    "PortalBlock",
    "PortalKey",
    "PortalStatus",
    "PriceUnit",
    "Role",
    "SearchIndexPosition",
    "SyncSession",
    "SyncSessionItem",
    "SyncStatus",
    "Visibility",
]
