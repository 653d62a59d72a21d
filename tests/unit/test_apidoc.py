"""apidoc: declarations beside handlers, registration with the context bound, and the
document's paths read back from the app's url_map."""

from __future__ import annotations

from functools import partial

import trio
from quart import Blueprint, Response
from quart_trio import QuartTrio

from appliance.server.apidoc import (
    alias,
    operation,
    operations_of,
    paths,
    ref,
    register,
    request_body,
)


@operation("GET", "getThing", "things", "A thing", {"200": {"description": "OK."}})
@operation(
    "POST",
    "makeThing",
    "things",
    "Make a thing",
    {"201": {"description": "Made."}},
    body=request_body(ref("Thing"), "The thing."),
    writes=True,
)
async def thing(ctx: object, name: str, *, extra: str = "") -> Response:
    return Response(f"{ctx}:{name}:{extra}")


@operation("GET", "health", "status", "Up?", {"200": {"description": "Up."}}, signed=False)
async def health(ctx: object) -> Response:
    return Response("up")


async def undeclared(ctx: object) -> Response:
    return Response("hidden")


def _app() -> QuartTrio:
    app = QuartTrio("t", static_folder=None)
    bp = Blueprint("t", __name__)
    register(
        bp,
        [
            ("/things/<name>", partial(thing, extra="x")),
            ("/stuff/<name>", alias(thing, "getStuff", "alias of things")),
            ("/health", health),
        ],
        "CTX",
    )
    bp.add_url_rule("/hidden", "hidden", undeclared)
    app.register_blueprint(bp)
    return app


def test_stacked_declarations_are_kept_by_method():
    ops = operations_of(thing)
    assert sorted(ops) == ["GET", "POST"]
    assert ops["GET"].op_id == "getThing" and ops["POST"].writes
    assert operations_of(partial(partial(thing, 1), extra="y")) == ops  # through partials
    assert operations_of(undeclared) == {}


def test_alias_renames_and_notes_every_operation():
    ops = operations_of(alias(thing, "getStuff", "alias of things"))
    assert {op.op_id for op in ops.values()} == {"getStuff"}
    assert ops["GET"].summary == "A thing (alias of things)"
    assert operations_of(thing)["GET"].op_id == "getThing"  # the original is untouched


def test_paths_follow_the_url_map_and_skip_undeclared_rules():
    doc = paths(_app())
    assert set(doc) == {"/things/{name}", "/stuff/{name}", "/health"}
    assert list(doc["/things/{name}"]) == ["get", "post"]
    get = doc["/things/{name}"]["get"]
    assert get["operationId"] == "getThing" and get["tags"] == ["things"]
    assert set(get["responses"]) == {"200", "400", "401", "403", "404", "406", "500"}
    post = doc["/things/{name}"]["post"]
    assert {"413", "503", "201"} <= set(post["responses"])
    assert list(post["responses"]) == sorted(post["responses"])
    assert post["requestBody"]["content"]["application/json"]["schema"] == ref("Thing")
    assert doc["/stuff/{name}"]["post"]["operationId"] == "getStuff"
    health_op = doc["/health"]["get"]
    assert health_op["security"] == [] and set(health_op["responses"]) == {"200"}


def test_register_binds_the_context_and_answers_only_declared_methods():
    app = _app()

    async def main() -> None:
        client = app.test_client()
        r = await client.get("/things/a/")  # trailing slash tolerated
        assert await r.get_data(as_text=True) == "CTX:a:x"
        r = await client.get("/stuff/b")
        assert await r.get_data(as_text=True) == "CTX:b:"
        assert (await client.delete("/things/a")).status_code == 405

    trio.run(main)
