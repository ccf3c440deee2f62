"""Membership's ``up`` / ``down`` signals in-process: two real LinkManagers on 127.x sockets."""

from __future__ import annotations

import os
import random

from mn_node.link.crypto import Identity
from mn_node.link.manager import LinkManager
from mn_node.membership import Member, Membership
from tests.support.wait import async_wait_until


async def test_up_and_down_signals_fire_once_per_change() -> None:
    cookie = os.urandom(32)
    net = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}"
    a = LinkManager(Identity(cookie, f"a@{net}.1", "inc-a"), local_host=f"{net}.1")
    b = LinkManager(Identity(cookie, f"b@{net}.2", "inc-b"), local_host=f"{net}.2")
    try:
        await a.listen(f"{net}.1", 0)
        await b.listen(f"{net}.2", 0)
        members = Membership(a, a.ident.node, f"{net}.1", "inc-a")
        ups: list[Member] = []
        downs: list[tuple[str, str]] = []
        members.up.connect(ups.append)
        members.on_nodedown(lambda m: downs.append((m.name, m.status)))  # the daemon's spelling
        members.down.connect(lambda m: 1 / 0)  # a failing subscriber breaks nobody

        host, port = b.listening[0]
        a.ensure_peer(b.ident.node, str(host), int(port))

        async def seen_up() -> bool:
            return bool(ups)

        await async_wait_until(seen_up, 5, f"nodeup of {b.ident.node} (members: {members.up_names()})")
        assert [m.name for m in ups] == [b.ident.node] and members.is_up(b.ident.node)

        await b.stop("test over")

        async def seen_down() -> bool:
            return bool(downs)

        await async_wait_until(seen_down, 5, f"nodedown of {b.ident.node}")
        assert downs == [(b.ident.node, "down")] and len(ups) == 1
        m = members.get(b.ident.node)
        assert m is not None and m.reason.startswith("left"), m
    finally:
        await a.stop("test over")
        await b.stop("test over")
