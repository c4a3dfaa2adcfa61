"""The public names users import keep working at the paths the README gives (some are
one-release shims of the paths before the package was split by layer)."""

import inspect

import pytest


def test_package_exports_the_public_api():
    import myko_django
    from myko_django.items.operations import command, query, report
    from myko_django.items.registry import register
    from myko_django.items.sagas import saga
    from myko_django.log.managers import ItemManager
    from myko_django.models import Item

    assert set(myko_django.__all__) == {
        "Item",
        "ItemManager",
        "__version__",
        "command",
        "query",
        "register",
        "report",
        "saga",
    }
    assert myko_django.Item is Item
    assert myko_django.ItemManager is ItemManager
    assert (myko_django.command, myko_django.query, myko_django.report) == (command, query, report)
    assert myko_django.register is register
    assert myko_django.saga is saga
    assert isinstance(myko_django.__version__, str)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        myko_django.nope  # noqa: B018


def test_register_with_a_name_makes_an_existing_model_an_item():
    from myko_django.items.registry import registry
    from tests.testapp.models import LegacyRow

    item_type = registry.for_model(LegacyRow)
    assert item_type is not None and item_type.name == "Legacy"


def test_old_paths_still_work():
    import myko_django
    from myko_django.managers import ItemManager
    from myko_django.models import Event
    from myko_django.operations import command, query, report
    from myko_django.routing import websocket_application
    from myko_django.testing import LiveSession

    assert ItemManager is myko_django.ItemManager
    assert (command, query, report) == (myko_django.command, myko_django.query, myko_django.report)
    fields = {f.name for f in Event._meta.get_fields()}
    assert {"position", "item_type", "item_id", "change_type"} <= fields
    assert callable(websocket_application())
    assert callable(LiveSession)


def test_client_api():
    from myko_django.client import Client, connect

    assert "protocol" in inspect.signature(connect).parameters
    for method in ("send_event", "command", "query", "close"):
        assert callable(getattr(Client, method))


def test_asgi_application_routes_http_to_django_and_websockets_to_myko():
    from django.core.handlers.asgi import ASGIHandler

    from myko_django.asgi import get_asgi_application
    from myko_django.server.endpoint import OriginValidator

    routes = get_asgi_application().application_mapping
    assert isinstance(routes["http"], ASGIHandler)
    assert isinstance(routes["websocket"], OriginValidator)

    async def mine(scope, receive, send): ...

    assert get_asgi_application(http=mine).application_mapping["http"] is mine
