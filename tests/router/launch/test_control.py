"""The launcher's control port: the cluster secret for the CLI's admin verbs, behind the token."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from aiohttp import web

from common.auth import authorization_value, is_authorized
from common.serving import listening
from router.launch._admin_cli import _admin_call
from router.launch._control import ControlServer, LauncherInfo, control_request


async def _apply(config: object) -> dict[str, Any]:
    return {}


def _info(control: ControlServer, router_url: str = "http://127.0.0.1:1") -> LauncherInfo:
    return LauncherInfo(
        pid=1,
        port=1,
        router_url=router_url,
        control_url=control.url,
        token=control.token,
        config_path="/nowhere.yaml",
    )


async def test_the_secret_is_handed_to_a_holder_of_the_token_only() -> None:
    control = ControlServer(apply=_apply, state=dict, secret=lambda: "the-secret")
    await control.start()
    try:
        assert await control_request(_info(control), "GET", "/secret") == (
            200,
            {"secret": "the-secret"},
        )
        stranger = LauncherInfo(**{**_info(control).__dict__, "token": "guess"})
        status, body = await control_request(stranger, "GET", "/secret")
        assert (status, body["error"]["code"]) == (401, "unauthorized")
    finally:
        await control.close()


async def test_a_launcher_may_offer_no_secret() -> None:
    control = ControlServer(apply=_apply, state=dict)
    await control.start()
    try:
        status, body = await control_request(_info(control), "GET", "/secret")
        assert (status, body["error"]["code"]) == (404, "not_offered")
    finally:
        await control.close()


async def test_an_admin_verb_without_a_secret_asks_the_launcher(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[str | None] = []

    async def models(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if not is_authorized(request.headers.get("Authorization"), "the-secret"):
            return web.json_response({"error": {"code": "unauthorized"}}, status=401)
        return web.json_response({"models": []})

    router = web.Application()
    router.router.add_get("/-/admin/models", models)
    control = ControlServer(apply=_apply, state=dict, secret=lambda: "the-secret")
    await control.start()
    try:
        async with listening(router, "127.0.0.1", 0) as port:
            url = f"http://127.0.0.1:{port}"
            args = argparse.Namespace(json=True)
            code = await _admin_call(
                "models", url, "GET", "/-/admin/models", None, args, _info(control, url), None, None
            )
    finally:
        await control.close()
    assert code == 0
    assert seen == [authorization_value("the-secret")]
    assert json.loads(capsys.readouterr().out) == {"models": []}
